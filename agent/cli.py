"""The ``cvsweep`` command line: options in, one library call, one line per error.

    cvsweep validate sweeps/demo.yaml
    cvsweep create sweeps/demo.yaml --backend local      # prints the sweep id last
    cvsweep agent SWEEP --gpus all                       # one worker per GPU (or --gpus none --workers 2)
    cvsweep leaderboard SWEEP --format markdown --write-back
    cvsweep list                                         # every local sweep, newest first
    cvsweep slurm SWEEP --tasks 8 --gpus-per-task 4      # its agents as a SLURM job array (prints the job id)
    cvsweep demo                                         # demo data + local sweep + agents + finalize + report

The commands sit in modules by theme (cli_sweeps, cli_queries, cli_tools); what they do lives in the
library (agent.access, agent.actions, agent.queries, ...); errors the user can fix are the library's
own exceptions, each turned here into one line: exit code 2 for bad input, 1 for everything else.
"""
from __future__ import annotations

import os

import click

from . import cli_queries, cli_sweeps, cli_tools
from .cli_common import Exit2
from .settings import SettingsError, load_settings, unset_empty_wandb_vars


def _user_errors():
    """(bad input -> exit 2, other problems -> exit 1): the library's exceptions the user can act on."""
    # lazy: the modules that raise them load with the command that runs, not for `cvsweep --help`
    from cvtrain.config import ConfigError
    from cvtrain.shift_profile import ProfileError, ShiftError

    from .access import AccessProblem, WandbUnreachable
    from .finalize import FinalizeError
    from .launcher import LaunchError
    from .store import StoreError
    from .validate import SweepFileError
    from .wandb_backend import SweepPathError

    return (SweepPathError, LaunchError, SettingsError, SweepFileError, ConfigError, ShiftError,
            ProfileError), \
        (AccessProblem, StoreError, FinalizeError), WandbUnreachable


class Group(click.Group):
    """Turns the library's errors into one line (``Error: ...``) and an exit code, never a traceback."""

    def invoke(self, ctx):
        usage, other, unreachable = _user_errors()
        try:
            return super().invoke(ctx)
        except unreachable as exc:
            raise Exit2(str(exc).strip().replace("\n", "; ")) from None
        except usage as exc:
            raise click.UsageError(str(exc).strip().replace("\n", "; "), ctx) from None
        except other as exc:
            raise click.ClickException(str(exc).strip().replace("\n", "; ")) from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx):
    """W&B Sweeps for timm image classifiers: online against W&B, or offline with a local controller."""
    # Resolved once (environment over .env over defaults) and passed down. The API key stays in
    # the settings object: it goes only into the environments built for the children that need it.
    # An empty WANDB_* (a common way to "unset" one) means not set; wandb itself would reject it.
    unset_empty_wandb_vars(os.environ)
    try:
        ctx.obj = load_settings()
    except SettingsError as exc:
        raise click.UsageError(str(exc), ctx) from None


# The commands, by theme; ``cvsweep --help`` lists them by name.
for _command in (*cli_sweeps.COMMANDS, *cli_queries.COMMANDS, *cli_tools.COMMANDS):
    cli.add_command(_command)


def main():
    cli(prog_name="cvsweep")
