"""``cvtrain``: train one model, or ``cvtrain predict`` a submission.

Options take exactly the form ``wandb agent`` passes them::

    cvtrain --data_dir=data/demo --model_name=resnet18 --learning_rate=0.001 --amp=False \\
            "--mixup={'alpha': 0.2}" --augment.rotate=0.5 --config=base.yaml --resume=auto

Booleans are True/False, lists and dicts Python repr, nested keys dotted.
``--key value`` works too. Exit codes: 0 ok (finished, or stopped early by the sweep), 1 the run
failed, 2 bad input, 143 preempted (SIGTERM/SIGINT; resume with --resume=auto).
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Mapping

from .checks import close_matches
from .coerce import parse_literal
from .config import RUN_FACT_KEYS, Config, ConfigError, known_param_paths, mapping_layer, resolve
from .config_help import settings_help
from .layers import env_layer, file_layer, merged_env, sweep_layer
from .split import split_seed_from_sweep_id
from .stop import SignalWatch, StopRequest
from .tracking import failed_before_run, in_wandb_sweep, record_failed_run

CLI_ONLY = ("config", "resume", "env_file")
PREDICT_OPTIONS = ("checkpoint", "data_dir", "output", "test_dir", "sample_submission", "tta", "batch_size",
                   "device", "cache_dir")


class UsageError(ValueError):
    pass


@dataclass
class ParsedArgs:
    values: dict = field(default_factory=dict)   # raw strings, parsed when the config resolves
    config: str | None = None
    resume: str | None = None
    env_file: str | None = ".env"


def parse_argv(argv: list[str], known: list[str] | None = None, cli_only=CLI_ONLY) -> ParsedArgs:
    """Parse ``--key=value`` / ``--key value`` / ``--flag`` arguments; unknown keys are an error."""
    facts_ok = known is None
    known = known_param_paths() if known is None else known
    out = ParsedArgs()
    problems = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            problems.append(f"unexpected argument {arg!r}: options look like --name=value")
            i += 1
            continue
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is not None and not nxt.startswith("--"):
                value, i = nxt, i + 1
            else:
                value = "True"  # a bare flag
        i += 1
        head = key.split(".")[0]
        if key in RUN_FACT_KEYS and facts_ok:
            pass  # the run's own logged facts, handed back by a W&B resume: not settings
        elif key in cli_only:
            if key == "resume" and value == "True":
                value = "auto"
            setattr(out, key, value)
        elif key in known or head in {k.split(".")[0] for k in known}:
            out.values[key] = value
        else:
            problems.append(f"--{key}: unknown option{close_matches(key, known + list(cli_only))}. "
                            f"Known options: {', '.join('--' + k for k in sorted(set(known) | set(cli_only)))}")
    if problems:
        raise UsageError("\n".join(problems))
    return out


def build_config(args: ParsedArgs, environ: Mapping[str, str] | None = None, check_model: bool = True) -> Config:
    """defaults < .env and environment < the W&B sweep's split seed < --config FILE < sweep parameters <
    command line. Under a W&B sweep (``WANDB_SWEEP_ID``) every trial validates on the same images."""
    environ = dict(os.environ if environ is None else environ)
    layers = [env_layer(merged_env(environ, args.env_file))]
    sweep_id = environ.get("WANDB_SWEEP_ID")
    if sweep_id:
        layers.append({"split_seed": (split_seed_from_sweep_id(sweep_id), f"sweep {sweep_id}")})
    if args.config:
        layers.append(file_layer(args.config))
    layers.append(sweep_layer(environ.get("WANDB_SWEEP_PARAM_PATH")))
    layers.append(mapping_layer(args.values, "cli"))
    return resolve(*layers, check_model=check_model)


def setup_logging(level=logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


USAGE = """usage:
  cvtrain [--config=FILE.yaml] [--resume[=auto|PATH]] [--env_file=.env] [--SETTING=VALUE ...]
  cvtrain predict --checkpoint=PATH --data_dir=DIR [--output=submission.csv] [--tta=[...]]   (cvtrain predict --help)

Settings resolve once: defaults < .env and environment (CVTRAIN_<NAME>, WANDB_*) < --config FILE.yaml
< sweep parameters < command line. Values as `wandb agent` passes them: True/False, lists and dicts as
Python repr ("--mixup={'alpha': 0.2}"), nested keys dotted (--augment.rotate=0.5), empty for None.
Exit codes: 0 finished or stopped by a sweep, 143 preempted (checkpointed: --resume=auto continues it),
1 the run failed, 2 bad input.
"""
PREDICT_USAGE = """usage: cvtrain predict --checkpoint=PATH --data_dir=DIR [options]

Writes a submission CSV in sample_submission.csv order from a checkpoint (best.pt or last.pt).
  --checkpoint=PATH          checkpoint written by cvtrain (required)
  --data_dir=DIR             holds the test images and sample_submission.csv (required)
  --output=FILE              default submission.csv
  --test_dir=DIR             test images under data_dir; default test
  --sample_submission=FILE   default sample_submission.csv
  --tta=LIST                 test-time views, e.g. "['none', 'rot90']"; default: the checkpoint's tta;
                             auto: the views that score best on the checkpoint's shifted validation set
                             (its val_shift), said with the gain
  --batch_size=N             default 64
  --device=auto|cpu|cuda     default auto
  --cache_dir=DIR            decoded-image cache; default: the checkpoint's
"""
HELP_FLAGS = ("-h", "--help", "help")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:  # `cvtrain --help | head`: the reader left; nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    if argv and argv[0] in HELP_FLAGS:
        print(__doc__.split("\n\n")[0].replace("``", "") + "\n\n" + USAGE + "\nSettings (type, default, meaning):\n" + settings_help())
        return 0
    if argv and argv[0] == "predict":
        if any(a in HELP_FLAGS for a in argv[1:]):
            print(PREDICT_USAGE)
            return 0
        return predict_main(argv[1:])
    setup_logging()

    # SIGTERM/SIGINT end the run cleanly at the next batch. Under `wandb agent`, a SIGTERM from the
    # agent is the sweep stopping the run (stopped, exit 0); any other is a preemption (last.pt of the
    # last whole epoch stays, the W&B run is marked preempting, exit 143 so the sweep requeues it).
    sweep = in_wandb_sweep()
    stop = StopRequest()
    watch = SignalWatch(stop, os.getppid() if sweep else None, on_signal=_say_signal).start()
    try:
        args = parse_argv(argv)
        cfg = build_config(args)
        from .engine import train  # lazy: torch and timm load only once the settings are good

        # A requeued (preempted) sweep trial comes back with the same run id, so the same output dir.
        result = train(cfg, resume=args.resume or ("auto" if sweep else None), stop_event=stop)
    except (UsageError, ConfigError) as exc:
        print(f"cvtrain: {exc}", file=sys.stderr)
        _record_failure(exc, sweep)
        return 2
    except Exception as exc:  # noqa: BLE001 - one clear line for every known failure, traceback otherwise
        # lazy: these modules import torch; a bad setting or --help answers without it
        from .checkpoint import UnsafeCheckpointError
        from .data import DataError
        from .epoch import NonFiniteLossError
        from .model import PretrainedWeightsError

        if isinstance(exc, (DataError, PretrainedWeightsError, FileNotFoundError, UnsafeCheckpointError)):
            print(f"cvtrain: {exc}", file=sys.stderr)
            _record_failure(exc, sweep)
            return 2
        if isinstance(exc, NonFiniteLossError):
            print(f"cvtrain: {exc}", file=sys.stderr)
            return 1
        raise
    finally:
        watch.restore()
    print(f"cvtrain: {result.state}; best val_f1 {result.best_val_f1:.4f}; outputs in {result.output_dir}")
    if result.state == "preempted":
        print(f"cvtrain: {result.reason}; continue with the same options and --resume=auto")
        return watch.exit_code
    return 0 if result.state != "failed" else 1


def _say_signal(kind: str, reason: str, first: bool) -> None:
    if first:
        print(f"cvtrain: {reason}: the run ends {kind} at the next batch", file=sys.stderr, flush=True)
    else:
        print(f"cvtrain: {reason}: already ending", file=sys.stderr, flush=True)


def _record_failure(exc: BaseException, sweep: bool) -> None:
    """Under a W&B sweep, a trial that fails before its run starts still tells W&B why."""
    if not sweep:
        return
    if isinstance(exc, UsageError) or failed_before_run(exc):
        try:
            record_failed_run(f"{type(exc).__name__}: {exc}")
        except Exception as err:  # noqa: BLE001 - the failure itself was printed already
            print(f"cvtrain: could not record the failure on W&B: {type(err).__name__}: {err}", file=sys.stderr)


def predict_main(argv: list[str]) -> int:
    """``cvtrain predict --checkpoint=best.pt --data_dir=DIR --output=submission.csv [--tta=[...]]``"""
    setup_logging()
    try:
        args = parse_argv(argv, known=list(PREDICT_OPTIONS), cli_only=())
        kw = {k: parse_literal(v) if k in ("tta", "batch_size") else v for k, v in args.values.items()}
        if "checkpoint" not in kw or "data_dir" not in kw:
            raise UsageError("predict needs --checkpoint=PATH and --data_dir=DIR (holding test/ and sample_submission.csv)")
        if not os.path.isfile(kw["checkpoint"]):
            raise FileNotFoundError(f"--checkpoint={kw['checkpoint']}: no such file")
        from .predict import predict_submission  # lazy: torch loads (seconds) only once the options are good

        out = predict_submission(**kw, say=lambda line: print(f"cvtrain predict: {line}"))
    except (UsageError, ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"cvtrain predict: {exc}", file=sys.stderr)
        return 2
    print(f"cvtrain predict: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
