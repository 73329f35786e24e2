"""``cvtrain``: train one model, or ``cvtrain predict`` a submission.

Options take exactly the form ``wandb agent`` passes them::

    cvtrain --data_dir=data/demo --model_name=resnet18 --learning_rate=0.001 --amp=False \\
            "--mixup={'alpha': 0.2}" --augment.rotate=0.5 --config=base.yaml --resume=auto

Booleans are True/False, lists and dicts Python repr, nested keys dotted.
``--key value`` works too. Exit codes: 0 ok, 1 the run failed, 2 bad input.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Mapping

from .config import (Config, ConfigError, close_matches, env_layer, file_layer, known_param_paths,
                     mapping_layer, merged_env, resolve, sweep_layer)

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
        if key in cli_only:
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
    """defaults < .env and environment < --config FILE < sweep parameters < command line."""
    environ = dict(os.environ if environ is None else environ)
    layers = [env_layer(merged_env(environ, args.env_file))]
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
Exit codes: 0 finished (or stopped/preempted cleanly), 1 the run failed, 2 bad input.
"""
PREDICT_USAGE = """usage: cvtrain predict --checkpoint=PATH --data_dir=DIR [options]

Writes a submission CSV in sample_submission.csv order from a checkpoint (best.pt or last.pt).
  --checkpoint=PATH          checkpoint written by cvtrain (required)
  --data_dir=DIR             holds the test images and sample_submission.csv (required)
  --output=FILE              default submission.csv
  --test_dir=DIR             test images under data_dir; default test
  --sample_submission=FILE   default sample_submission.csv
  --tta=LIST                 test-time views, e.g. "['none', 'rot90']"; default: the checkpoint's tta
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
        from .config import settings_help

        print(__doc__.split("\n\n")[0] + "\n\n" + USAGE + "\nSettings (type, default, meaning):\n" + settings_help())
        return 0
    if argv and argv[0] == "predict":
        if any(a in HELP_FLAGS for a in argv[1:]):
            print(PREDICT_USAGE)
            return 0
        return predict_main(argv[1:])
    setup_logging()
    # SIGTERM (a scheduler's preemption, or `wandb agent` stopping a run) ends the run cleanly at the
    # next batch: the W&B run finishes, last.pt of the last whole epoch stays for --resume=auto.
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        args = parse_argv(argv)
        cfg = build_config(args)
        from .engine import train

        result = train(cfg, resume=args.resume, stop_event=stop)
    except (UsageError, ConfigError) as exc:
        print(f"cvtrain: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one clear line for every known failure, traceback otherwise
        from .data import DataError
        from .engine import NonFiniteLossError
        from .model import PretrainedWeightsError

        if isinstance(exc, (DataError, PretrainedWeightsError, FileNotFoundError)):
            print(f"cvtrain: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, NonFiniteLossError):
            print(f"cvtrain: {exc}", file=sys.stderr)
            return 1
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"cvtrain: {result.state}; best val_f1 {result.best_val_f1:.4f}; outputs in {result.output_dir}")
    if result.state == "preempted":
        print(f"cvtrain: {result.reason}; continue with the same options and --resume=auto")
    return 0 if result.state != "failed" else 1


def predict_main(argv: list[str]) -> int:
    """``cvtrain predict --checkpoint=best.pt --data_dir=DIR --output=submission.csv [--tta=[...]]``"""
    setup_logging()
    try:
        args = parse_argv(argv, known=list(PREDICT_OPTIONS), cli_only=())
        from .config import parse_literal
        from .predict import predict_submission

        kw = {k: parse_literal(v) if k in ("tta", "batch_size") else v for k, v in args.values.items()}
        if "checkpoint" not in kw or "data_dir" not in kw:
            raise UsageError("predict needs --checkpoint=PATH and --data_dir=DIR (holding test/ and sample_submission.csv)")
        out = predict_submission(**kw)
    except (UsageError, ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"cvtrain predict: {exc}", file=sys.stderr)
        return 2
    print(f"cvtrain predict: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
