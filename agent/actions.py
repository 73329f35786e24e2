"""What the longer ``cvsweep`` commands do, as functions: start agents, finalize, the demo, status, list.

They take the resolved :class:`~agent.settings.Settings` and an opened sweep, write their
lines through ``echo`` (``echo(text, err=False)``, click's by default in the CLI) and return an
exit code; the CLI only parses options and maps errors to one line.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from .access import OpenSweep, local_store
from .queries import format_leaderboard, format_table, leaderboard, nothing_to_rank, progress_line, state_counts
from .settings import Settings
from .store import disk_usage
from .validate import check_sweep_file
from .wandb_backend import log_submission, write_back_leaderboard

REPO_ROOT = Path(__file__).resolve().parents[1]
Echo = Callable[..., None]


def _print(text: str = "", err: bool = False) -> None:

    print(text, file=sys.stderr if err else sys.stdout, flush=True)


# ---------------------------------------------------------------------------
def run_agents(s: Settings, sweep: OpenSweep, gpus: str = "all", gpus_per_trial: int = 1, workers: int | None = None,
               count: int | None = None, dry_run: bool = False, pin: bool = True, echo: Echo = _print) -> int:
    """Plan the workers (GPUs this process may use, its cores), print the plan, then run it unless ``dry_run``.

    Raises :class:`~agent.launcher.LaunchError` for a plan that cannot be (bad --gpus, say).
    """
    # lazy: GPU discovery and the launcher (psutil, NVML), for `cvsweep agent` only
    from cvtrain.gpus import Visible, visible_gpus

    from .launcher import (
        Launcher,
        allowed_cpus,
        build_specs,
        cpu_ranges,
        describe_visible,
        nvml_view,
        parse_gpus,
        plan_groups,
        plan_line,
    )

    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    cpus = allowed_cpus()
    use_gpus = (gpus or "all").strip().lower() != "none"
    visible = visible_gpus(inherited, nvml_view()) if use_gpus else Visible([], [])
    chosen = parse_gpus(gpus, visible, inherited)
    if not chosen and workers is None:
        workers = min(2, len(cpus))  # no GPU: up to 2 CPU workers, however "no GPU" was said
    groups = plan_groups(chosen, gpus_per_trial, workers)
    env = s.child_env(with_key=sweep.backend == "wandb")  # local workers never need the key
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if "CVTRAIN_NUM_WORKERS" in s.env:  # the user's loader count (.env too) beats our sizing
        env.setdefault("CVTRAIN_NUM_WORKERS", s.env["CVTRAIN_NUM_WORKERS"])
    # W&B workers get the sweep's full entity/project/id as their sweep id
    specs = build_specs(sweep.key, sweep.backend, groups, env, str(s.state_dir.resolve()), count, cpus=cpus, pin=pin)
    # The plan: one line per worker on stdout; where it came from on stderr.
    for line in describe_visible(visible, inherited) if use_gpus else []:
        echo(line, err=True)
    echo(f"sweep {sweep.key} ({sweep.backend}): {len(specs)} worker(s) on cpus {cpu_ranges(cpus)}"
         + (" — dry run, nothing started" if dry_run else ""), err=True)
    for spec in specs:
        echo(plan_line(spec))
    if dry_run:
        return 0
    progress = _progress_printer(sweep, echo) if sweep.backend == "local" else None
    code = Launcher(specs, progress=progress, echo=echo).run()
    if sweep.backend == "local":
        st = sweep.store.get_sweep(sweep.key)
        echo(f"sweep {sweep.key}: {st.state}" + (f" ({st.finished_reason})" if st.finished_reason else ""))
    return code


def _progress_printer(sweep: OpenSweep, echo: Echo) -> Callable[[], None]:
    """The launcher's progress callback: the sweep's progress line, whenever it changes."""

    last = [None]

    def show() -> None:
        line = progress_line(sweep.store, sweep.key)
        if line != last[0]:
            echo(f"[{time.strftime('%H:%M:%S')}] {line}")
            last[0] = line

    return show


# ---------------------------------------------------------------------------
def _distinctive(f, finalists: list, parent) -> dict:
    """A finalist's settings worth a line: those the parent sweep varied and those the finalists differ on."""
    swept = {k for k, v in (parent.config.get("parameters") or {}).items() if isinstance(v, dict) and "value" not in v}
    differ = {k for k in f.params if len({json.dumps(x.params.get(k), sort_keys=True) for x in finalists}) > 1}
    return {k: f.params[k] for k in sorted((swept | differ) & set(f.params))}


def run_finalize(s: Settings, parent_sweep: OpenSweep, top: int = 3, folds: int = 5, tta: list | str | None = None,
                 gpus: str = "all", workers: int | None = None, seed: int = 0, output: str = "submission.csv",
                 echo: Echo = _print) -> int:
    """The top configurations retrained on folds (a local grid sweep), the ensemble, the submission.
    ``tta``: views, "auto" (chosen out of fold), or None: auto when every finalist has val_shift on, else
    each configuration's tta. The last line printed is ``oof_macro_f1: X``. Raises
    :class:`~agent.finalize.FinalizeError`."""
    from .finalize import (  # lazy: numpy and the trainer's settings, for finalize only
        auto_views,
        collect,
        finalize_config,
        find_or_create_final_sweep,
        select_finalists,
        write_outputs,
    )

    parent = parent_sweep.store.get_sweep(parent_sweep.key)
    finalists = select_finalists(parent_sweep.store, parent_sweep.key, top)
    auto = auto_views(finalists, tta)
    config = finalize_config(parent, finalists, folds, None if auto else tta, seed)
    store = parent_sweep.store if parent_sweep.backend == "local" else local_store(s, create=True)
    final, resumed, again = find_or_create_final_sweep(store, parent, config, views=auto)
    echo(f"finalize {parent.id}: {len(finalists)} configuration(s) x {folds} folds = "
         f"{len(finalists) * folds} fold trials in local sweep {final.id}" + (" (resumed)" if resumed else ""))
    for why in again:
        echo(f"  queued again: {why}")
    for f in finalists:
        echo(f"  #{f.index} {f.run} ({parent.metric_name} {f.metric:.4f}, configuration from {f.config_from}): "
             f"{json.dumps(_distinctive(f, finalists, parent), sort_keys=True)}")
    echo("  (what the sweep varied and where the finalists differ; each whole configuration is in final.json)")
    code = run_agents(s, OpenSweep("local", store, final.id), gpus, 1, workers, echo=echo)
    if code != 0:
        echo(f"finalize: the agents exited with {code}; run the same command again to resume", err=True)
        return code
    result = collect(store, store.get_sweep(final.id), finalists, folds, views=auto)
    out = write_outputs(result, output, store.root)
    where = log_submission(result, out, parent, parent_sweep.backend, store.root)
    _echo_result(result, echo)
    echo(f"wrote {out} ({len(result.test_ids)} rows, the selected weights); submission logged to "
         + (f"W&B: {where}" if parent_sweep.backend == "wandb" else f"the offline W&B run in {where}"))
    echo(f"oof_macro_f1: {result.oof_macro_f1:.6f}")
    return 0


def _echo_result(result, echo: Echo) -> None:
    """The views chosen (--tta auto); out-of-fold figures (selected nested, equal, best single, with 90%
    intervals) on the images the weights were selected on, the clean and shifted ones beside; the holdout."""
    e, shifted = result.estimates, result.selected_on == "shifted"
    if result.tta_choice:
        from .finalize_views import ViewChoice

        echo(ViewChoice(**{k: v for k, v in result.tta_choice.items() if k != "note"}).describe())
    how = "stratified" if result.folds_stratified else "NOT stratified (a class has a single image)"
    echo(f"\nout-of-fold macro-F1 ({result.n_images} images, {result.folds} folds, {how}; "
         f"views {','.join(result.oof_views)} as in the submission; weights selected on the "
         + ("shifted copies of the held-out images, clean figures beside" if shifted else "held-out images") + "):")
    for name, n in result.small_classes.items():
        echo(f"  warning: class {name} has {n} image(s), fewer than the {result.folds} folds")
    for r in result.finalists:
        echo(f"  #{r['index']} {r['run']}: {r['oof_macro_f1']:.4f} [{r['oof_macro_f1_ci90'][0]:.3f}, "
             f"{r['oof_macro_f1_ci90'][1]:.3f}]  weight {r['weight']:.2f}  (folds: "
             + ", ".join(f"{v:.3f}" for v in r["fold_macro_f1"])
             + (f"; clean: {r['oof_macro_f1_clean']:.4f}" if shifted else "")
             + f"; one view: {r['oof_macro_f1_single_view']:.4f})")
    for name, label in (("best_single", "best single"), ("equal", "equal-weight ensemble"),
                        ("selected", "selected ensemble (nested)")):
        lo, hi = e[f"{name}_ci90"]
        echo(f"  {label}: {e[name]:.4f}  90% interval [{lo:.4f}, {hi:.4f}]"
             + (f"  (clean: {result.clean[name]:.4f})" if shifted else ""))
    echo(f"  P(selected ensemble beats the best single) = {e['p_selected_beats_best_single']:.2f} (paired bootstrap)")
    sv = result.single_view
    echo(f"  one view (none), clean: best single {sv['best_single']:.4f}, equal {sv['equal']:.4f}, "
         f"selected {sv['selected']:.4f}")
    if result.holdout:
        shift = result.holdout.get("macro_f1_shift")
        echo(f"holdout macro-F1 of the submitted ensemble: {result.holdout['macro_f1']:.4f} "
             + (f"(its shifted copies: {shift:.4f}) " if shift is not None else "")
             + f"({result.holdout['n_images']} images no trial trained or validated on; scored once)")


# ---------------------------------------------------------------------------
def run_demo(s: Settings, data_dir: str = "data/demo", sweep_file: str | None = None, gpus: str = "all",
             workers: int | None = None, echo: Echo = _print) -> int:
    """Demo data (made if missing) -> a local sweep -> leaderboard -> finalize -> report."""
    from cvtrain.demo_data import make_demo_data  # lazy: PIL and numpy, for the demo only

    from .controller import LocalController  # lazy: numpy and the search engine, for the demo only
    from .report import write_report  # lazy: plotly, for the demo's report only

    if not (Path(data_dir) / "train.csv").exists():
        echo(f"making demo data in {data_dir} ...")
        make_demo_data(data_dir)
    path = Path(sweep_file) if sweep_file else (Path("sweeps/demo.yaml") if Path("sweeps/demo.yaml").exists()
                                               else REPO_ROOT / "sweeps" / "demo.yaml")
    cfg = check_sweep_file(path)
    cfg.setdefault("parameters", {})["data_dir"] = {"value": str(Path(data_dir).resolve())}
    profile = _demo_shift_report(data_dir, s, echo)
    if "val_shift" not in cfg["parameters"] and profile:
        cfg["parameters"]["val_shift"] = {"value": profile}
    store = local_store(s, create=True)
    sweep = LocalController(store).create_sweep(cfg)
    echo(f"local sweep {sweep.id} from {path} ({cfg['method']}, run_cap {cfg.get('run_cap')})")
    opened = OpenSweep("local", store, sweep.id)
    code = run_agents(s, opened, gpus, 1, workers, echo=echo)
    rows = leaderboard(store, sweep.id)
    echo("\n" + (format_leaderboard(rows[:10], "table") if rows else
                 nothing_to_rank(store.list_trials(sweep.id), sweep.metric_name or "metric", sweep.id)))
    if rows:
        where = write_back_leaderboard(store, store.get_sweep(sweep.id), rows, "local")
        echo(f"\nleaderboard logged to the offline W&B run in {where}")
        echo(f"\nfinalize: the top 2 configurations retrained on 3 folds of all the data, ensembled "
             f"(`cvsweep finalize {sweep.id} --top 2 --folds 3`)")
        code = code or run_finalize(s, opened, 2, 3, None, gpus, workers, 0, "submission.csv", echo=echo)
        page = write_report(store, sweep.id, f"report-{sweep.id}.html")
        echo(f"sweep report (open in a browser, works offline): {page}")
    echo(f"upload the runs later, with a W&B key and a network: cvsweep sync {sweep.id}")
    return code


def _demo_shift_report(data_dir: str, s: Settings, echo: Echo) -> dict:
    """`cvsweep shift` on the demo data, small and fast (64 px, 60 images a side): table and profile."""
    from cvtrain.shift import measure_shift, shift_table  # lazy: torch, for the demo's shift report only


    result = measure_shift(data_dir, max_images=60, size=64, cache_dir=s.env.get("CVTRAIN_CACHE_DIR") or None)
    result["train"].pop("per_class", None)
    echo("\nthe test set's shift (`cvsweep shift " + str(data_dir) + "`):\n" + format_table(shift_table(result)))
    echo(f"recommended val_shift: {json.dumps(result['test']['profile'])}\n")
    return result["test"]["profile"]


# ---------------------------------------------------------------------------
def status_lines(sweep: OpenSweep) -> list[str]:
    """A sweep's state, method, trials by state and (local) disk use."""

    sw = sweep.store.get_sweep(sweep.key)
    counts = state_counts(sweep.store.list_trials(sweep.key))
    where = sweep.key if sweep.backend == "wandb" else sw.id
    lines = [f"sweep {where} ({sweep.backend}) {sw.name or ''}: {sw.state}"
             + (f" ({sw.finished_reason})" if sw.finished_reason else ""),
             f"method {sw.config.get('method')}, metric {sw.metric_name} ({sw.goal}), run_cap {sw.config.get('run_cap')}",
             "trials: " + (", ".join(f"{v} {k}" for k, v in counts.items()) or "none yet")]
    if sweep.backend == "local":

        d = sweep.store.root / "sweeps" / sw.id
        total, ckpts = disk_usage(d), disk_usage(d, "**/checkpoints/*.pt")
        lines.append(f"disk: {total / 2**20:.1f} MiB in {d} (checkpoints {ckpts / 2**20:.1f} MiB)")
    return lines


def sweep_table(store, now: float | None = None) -> list[dict]:
    """Every local sweep, newest first: id, name, backend, state, trials by state, best, age."""

    now = time.time() if now is None else now
    out = []
    for sw in sorted(store.list_sweeps(), key=lambda x: x.created_at or 0, reverse=True):
        trials = store.list_trials(sw.id, with_history=False)
        board = leaderboard(store, sw.id, top=1) if sw.metric_name else []
        out.append({"id": sw.id, "name": sw.name or "", "backend": sw.backend, "state": sw.state,
                    "trials": state_counts(trials), "best": board[0]["metric"] if board else None,
                    "metric": sw.metric_name, "age_s": now - (sw.created_at or now)})
    return out


def format_age(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds / n:.0f}{unit}"
    return f"{seconds:.0f}s"
