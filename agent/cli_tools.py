"""``cvsweep`` commands around the sweeps: demo-data, shift, slurm, sync, finalize, demo."""
from __future__ import annotations

import json
import subprocess
import sys

import click

from .cli_common import _echo, open_sweep, settings, sweep_options
from .queries import format_table


@click.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--per-class", default=12, show_default=True, help="training images per class")
@click.option("--test-per-class", default=4, show_default=True, help="test images per class")
@click.option("--seed", default=0, show_default=True)
def demo_data(out_dir, per_class, test_per_class, seed):
    """Write the synthetic 17-class document dataset to OUT_DIR (competition layout)."""
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
    from cvtrain.demo_data import make_demo_data

    out = make_demo_data(out_dir, per_class=per_class, test_per_class=test_per_class, seed=seed)
    click.echo(f"wrote demo data to {out} ({17 * per_class} train, {17 * test_per_class} test images)")


@click.command()
@click.argument("data_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="write the recommended val_shift profile (YAML) here")
@click.option("--max-images", type=click.IntRange(1), default=200, show_default=True,
              help="images sampled (seeded) from each of train and test")
@click.option("--test-dir", default="test", show_default=True, help="folder of test images under DATA_DIR")
@click.option("--size", type=click.IntRange(32), default=224, show_default=True,
              help="side of the square the images are measured at (blur sigmas are scaled to 224 px)")
@click.option("--seed", default=0, show_default=True)
def shift(data_dir, fmt, output, max_images, test_dir, size, seed):
    """Compare the training with the test images (no labels needed) and recommend a val_shift profile."""
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
    from cvtrain.shift import measure_shift, shift_table
    from cvtrain.shift_profile import dump

    result = measure_shift(data_dir, max_images=max_images, seed=seed, size=size,
                           cache_dir=settings().env.get("CVTRAIN_CACHE_DIR") or None, test_dir=test_dir)
    if output:
        with open(output, "w") as f:
            f.write(dump(result["train"]["profile"]))
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_table(shift_table(result)))
        click.echo(f"\nval_shift profile: {json.dumps(result['train']['profile'])}"
                   + (f" (written to {output})" if output else ""))


@click.command()
@click.argument("sweep_id")
@click.option("--tasks", type=int, required=True, help="array tasks: one `cvsweep agent` each, on one node")
@click.option("--gpus-per-task", type=click.IntRange(0), default=1, show_default=True,
              help="GPUs per task (--gres=gpu:G); 0: CPU-only tasks (agent --gpus none)")
@click.option("--cpus-per-task", type=click.IntRange(1), default=None, help="default: the partition's")
@click.option("--time", "time_text", default=None, help="each task's time limit (SLURM's formats: 90, 4:00:00, "
              "1-12:00:00); SIGTERM comes 120 s before it, the trials checkpoint and the task requeues")
@click.option("--partition", default=None)
@click.option("--account", default=None)
@click.option("--max-running", type=int, default=None, help="tasks running at once (--array=0-(N-1)%%K)")
@click.option("--nodes", type=click.IntRange(1), default=None, help="machines the tasks may use: 1 keeps them all "
              "on this one (the default, and the only choice, for a local sweep); a W&B sweep's tasks go anywhere")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, help="one more #SBATCH option, e.g. --sbatch-arg=--qos=low "
              "(repeatable)")
@click.option("--dry-run", is_flag=True, help="write the script and print it; submit nothing")
@sweep_options
def slurm(sweep_id, tasks, gpus_per_task, cpus_per_task, time_text, partition, account, max_running, nodes,
          sbatch_args, dry_run, project, entity):
    """Run SWEEP_ID's agents as a SLURM job array (a plain sbatch script beside the sweep's state); prints
    the job id last. Tasks get SIGTERM before their time limit, checkpoint, and requeue themselves."""
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
    from .access import AccessProblem
    from .slurm import SlurmError, parse_time
    from .slurm_jobs import SubmitError, make_plan, need_sbatch, submit, write_script
    from .store import StoreError

    try:
        time_s = parse_time(time_text) if time_text is not None else None
        try:
            sweep = open_sweep(sweep_id, project, entity)
        except (StoreError, AccessProblem) as exc:
            raise SlurmError(str(exc)) from None
        plan = make_plan(settings(), sweep, tasks, gpus_per_task, cpus_per_task, time_s, partition, account,
                         max_running, nodes, sbatch_args)
        if dry_run:
            path = write_script(plan)
            click.echo(path.read_text(), nl=False)
            click.echo(f"wrote {path}; nothing submitted (sbatch {path} submits it)", err=True)
            return
        job = submit(plan, need_sbatch())
    except SlurmError as exc:
        raise click.UsageError(str(exc)) from None
    except SubmitError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"submitted {tasks} task(s) of {plan.out_dir / 'job.sh'}; output in {plan.out_dir}; "
               f"see them with: cvsweep status {sweep_id}")
    click.echo(job)


@click.command()
@click.argument("sweep_id")
@click.option("--dry-run", is_flag=True, help="list what would be uploaded")
def sync(sweep_id, dry_run):
    """Upload a local sweep's offline runs to W&B (grouped by sweep id) with `wandb sync`."""
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
    from .access import AccessProblem, ensure_reachable, wandb_access

    if "/" in sweep_id:
        raise click.ClickException(f"{sweep_id} is a W&B sweep path: its runs are online already")
    sweep = open_sweep(sweep_id)
    if sweep.backend != "local":
        raise click.ClickException(f"{sweep_id} is a W&B sweep: its runs are online already")
    sw = sweep.store.get_sweep(sweep.key)
    root = sweep.store.root / "sweeps" / sweep.key
    dirs = sorted(str(p) for p in root.glob("**/wandb/offline-run-*") if p.is_dir())
    if not dirs:
        raise click.ClickException(f"no offline runs under {root}")
    click.echo(f"{len(dirs)} offline run(s) of sweep {sweep.key}")
    if dry_run:
        click.echo("\n".join(dirs))
        return
    s = settings()
    try:
        wandb_access(s, mode="online")
    except AccessProblem as exc:
        raise click.ClickException(f"{exc}. Do that on a machine with network, then run "
                                   f"`cvsweep sync {sweep.key}` again. Nothing was uploaded.") from None
    ensure_reachable(s)
    # The child finds the key where wandb looks: the environment built for it (.env's key), ~/.netrc.
    cmd = [sys.executable, "-m", "wandb", "sync", "--project", sw.project or "cvsweep"]
    if sw.entity:
        cmd += ["--entity", sw.entity]
    proc = subprocess.run(cmd + dirs, env=s.child_env(with_key=True))
    if proc.returncode != 0:
        raise click.ClickException(f"`wandb sync` failed (exit {proc.returncode}): is W&B reachable from here?")
    click.echo(f"synced {len(dirs)} run(s) to {sw.project}, grouped as {sweep.key}")


@click.command()
@click.argument("sweep_id")
@click.option("--top", default=3, show_default=True, type=click.IntRange(1),
              help="distinct configurations taken from the leaderboard")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2),
              help="folds of the training data (less the sweep's holdout); stratified when every class has 2 images")
@click.option("--tta", default=None, help="test-time views, comma-separated, or auto: chosen on the out-of-fold "
              "predictions (shifted copies when made); default: auto when the finalists have val_shift on, "
              "else each configuration's tta")
@click.option("--gpus", default="all", show_default=True, help="all | none | comma-separated indices")
@click.option("--workers", type=click.IntRange(1), default=None)
@click.option("--seed", default=0, show_default=True, help="seed of the folds (shared by every configuration)")
@click.option("-o", "--output", default="submission.csv", show_default=True)
@sweep_options
def finalize(sweep_id, top, folds, tta, gpus, workers, seed, output, project, entity):
    """Retrain SWEEP_ID's top configurations on K folds of the data; choose the ensemble out of fold; submit.

    Prints the selected ensemble's nested out-of-fold macro-F1 as the last line (oof_macro_f1: X).
    """
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
    from cvtrain.tta import TTA_VIEWS

    from .actions import run_finalize

    views = [v.strip() for v in tta.split(",") if v.strip()] if tta else None
    bad = [v for v in views or [] if v not in TTA_VIEWS]
    if views == ["auto"]:
        views = "auto"
    elif bad or views == []:
        raise click.BadParameter(f"{tta!r}: views are comma-separated from {', '.join(TTA_VIEWS)}, or auto",
                                 param_hint="--tta")
    sweep = open_sweep(sweep_id, project, entity)
    sys.exit(run_finalize(settings(), sweep, top, folds, views, gpus, workers, seed, output, echo=_echo))


@click.command()
@click.option("--data-dir", default="data/demo", show_default=True)
@click.option("--sweep-file", default=None, help="default: sweeps/demo.yaml")
@click.option("--gpus", default="all", show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None)
def demo(data_dir, sweep_file, gpus, workers):
    """Demo data (made if missing) -> a local sweep -> leaderboard -> finalize (submission.csv) -> report."""
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
    from .actions import run_demo

    sys.exit(run_demo(settings(), data_dir, sweep_file, gpus, workers, echo=_echo))


COMMANDS = (demo_data, shift, slurm, sync, finalize, demo)
