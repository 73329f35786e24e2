"""The trainer's rooms: the launcher stays torch-free, the trainer never reaches into the agent,
and no two trainer modules import each other (every import counted, lazy ones too)."""
import ast
import os
import subprocess
import sys

from conftest import ROOT

CVTRAIN = ROOT / "cvtrain"


def _imports(path) -> set[str]:
    """Absolute names of the modules ``path`` imports, anywhere in it but a TYPE_CHECKING block."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for stmt in node.body for n in ast.walk(stmt)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ("cvtrain." if node.level else "") + (node.module or "")
            out |= {base.rstrip(".")} if node.module else {f"cvtrain.{a.name}" for a in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    names = {p.stem for p in CVTRAIN.glob("*.py")}
    return {p.stem: {m.split(".")[1] for m in _imports(p) if m.startswith("cvtrain.") and m.split(".")[1] in names} - {p.stem}
            for p in CVTRAIN.glob("*.py")}


def test_the_launcher_and_gpu_discovery_import_no_torch():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for module in ("agent.launcher", "cvtrain.gpus"):
        code = f"import {module}, sys; assert 'torch' not in sys.modules, sorted(sys.modules)"
        subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


def test_no_trainer_module_imports_the_agent():
    found = {p.name: m for p in CVTRAIN.glob("*.py") for m in _imports(p) if m.split(".")[0] == "agent"}
    assert found == {}


def test_the_trainer_modules_import_each_other_without_a_cycle():
    graph, done, cycles = _graph(), set(), []

    def visit(node, path):
        for dep in sorted(graph[node]):
            if dep in path:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert cycles == []


def test_a_bad_argument_is_answered_before_torch_loads(tmp_path):
    """Loading torch takes seconds: a typo, a bad value or a missing checkpoint is answered without it."""
    bad = [["--learnin_rate=0.1"], ["--epochs=zero"], ["predict", "--checkpoint=nope.pt"], ["predict", "--bogus=1"],
           ["predict", f"--checkpoint={tmp_path / 'nope.pt'}", f"--data_dir={tmp_path}"]]
    code = ("import sys; from cvtrain.cli import main\n"
            f"codes = [main(a) for a in {bad!r}]\n"
            "assert 'torch' not in sys.modules, 'torch loaded'\n"
            "print(codes)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str([2] * len(bad))
    assert "nope.pt: no such file" in proc.stderr


def test_the_trainer_imports_no_scikit_learn_or_scipy():
    """Every trainer process paid about a second importing them for splits and scores that numpy does
    (cvtrain.folds, cvtrain.metrics; held equal to scikit-learn's by their tests)."""
    found = {p.name: m for p in CVTRAIN.glob("*.py") for m in _imports(p) if m.split(".")[0] in ("sklearn", "scipy")}
    assert found == {}


def test_the_trainers_command_line_loads_without_starting_a_thread():
    """Under `wandb agent`, SignalWatch blocks SIGTERM in the main thread so that only its own thread takes
    it (and learns who sent it); a thread started before that (numpy's BLAS pool, at numpy's import) would
    take SIGTERM with the default action: the trial killed outright, its W&B run never ended."""
    # BLAS pools sized to start threads even where the environment would keep them at one
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "4", "OMP_NUM_THREADS": "4",
           "MKL_NUM_THREADS": "4"}
    code = "import os, cvtrain.cli; n = len(os.listdir('/proc/self/task')); assert n == 1, f'{n} threads'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-1000:]
