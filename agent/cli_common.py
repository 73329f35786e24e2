"""What every ``cvsweep`` command shares: the resolved settings, the sweep it names, the
``--project/--entity`` options, and the one-line error that exits 2."""
from __future__ import annotations

import click

from .settings import Settings, load_settings


class Exit2(click.ClickException):
    """One line (``Error: ...``) and exit code 2, without a usage banner: the fix is in the line."""
    exit_code = 2


def settings() -> Settings:
    """The settings the group resolved for this invocation (environment over .env over defaults)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, Settings) else load_settings()


def open_sweep(sweep_id: str, project: str | None = None, entity: str | None = None, backend: str | None = None):
    """The sweep's backend, store and key; a W&B store's in-process calls see .env's key for this command."""
    from .access import open_sweep as _open  # lazy: each command loads only what it runs: `cvsweep --help` stays fast

    ctx = click.get_current_context()
    return _open(settings(), sweep_id, project, entity, backend, enter=ctx.with_resource)


def sweep_options(f):
    """``--project`` / ``--entity`` for a command that takes a sweep (W&B sweeps only)."""
    f = click.option("--entity", default=None, help="W&B entity of the sweep (or ENTITY/PROJECT/ID)")(f)
    return click.option("--project", default=None, help="W&B project of the sweep (or PROJECT/ID; "
                        "default WANDB_PROJECT, else cvsweep)")(f)


def _echo(text: str = "", err: bool = False) -> None:
    click.echo(text, err=err)
