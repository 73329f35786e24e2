"""Checkpoints: model, optimizer, scheduler, scaler, epoch, RNG states and the resolved config.

Every checkpoint holds tensors and plain Python data only, and is read with
``torch.load(weights_only=True)``: a checkpoint from elsewhere (a downloaded model
artifact) cannot run code when it is opened. Only a checkpoint in the run's own
checkpoint directory (written by an older cvtrain, with numpy RNG state) may be
resumed from with a full unpickle.

While a run trains, ``last.pt`` (every epoch, for resume) and ``best.pt`` (when the
metric improved) hold the whole training state. When the run ends, ``keep_checkpoints``
decides what stays (:func:`retain`): ``best`` (default) keeps only ``best.pt``, reduced
to what inference needs (weights, config, the ``inference`` facts: a third of an AdamW
checkpoint); ``last`` keeps only ``last.pt`` (whole state: training can be extended);
``all`` keeps both as they are; ``none`` keeps neither. A preempted run keeps both
(it resumes from ``last.pt``).

Writes do not stop training (:class:`Writer`): an epoch's checkpoint is a CPU copy of
the state, taken between epochs, that a background thread serialises while the next
epoch trains; one write at a time (the next epoch's waits for the previous), each to a
temporary file atomically renamed, and the run waits for the last one before it ends.
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .norm import model_data_config
from .validation import KEEP_CHECKPOINTS


@dataclass
class TrainState:
    epoch: int = 0                  # last completed epoch
    global_step: int = 0
    best_val_f1: float = -1.0
    best_epoch: int = 0
    history: list = field(default_factory=list)
    best_preds: Optional[tuple] = None   # (y_true, y_pred) of the best epoch


def rng_states() -> dict:
    # numpy's key array as a tensor: a numpy array would need a full unpickle to read back.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def inference_info(num_classes: int, class_names, cfg) -> dict:
    """What inference needs to rebuild and feed the model, kept together in a checkpoint's ``inference``."""
    return {"num_classes": int(num_classes), "class_names": list(class_names),
            "img_size": int(cfg.experiment.img_size), "resize": cfg.data.resize}


def save(path: Path, model, optimizer, scheduler, scaler, state: TrainState, cfg, info: dict,
         weights_only: bool = False) -> None:
    """Write atomically: a crash mid-save leaves the previous checkpoint intact.

    ``info``: :func:`inference_info`. ``weights_only``: only what inference reads (see :func:`slim`),
    for a run that ends here.
    """
    _write(path, contents(model, optimizer, scheduler, scaler, state, cfg, info, weights_only))


def contents(model, optimizer, scheduler, scaler, state: TrainState, cfg, info: dict,
             weights_only: bool = False) -> dict:
    """What a checkpoint holds (its tensors are the live ones: :func:`snapshot` before writing later)."""
    if weights_only:
        return {"model": model.state_dict(), "config": cfg.to_flat_dict(), "inference": dict(info),
                "format": 1, "state": _inference_state(state.__dict__), "weights_only": True,
                "data_config": model_data_config(model)}
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "state": state.__dict__,
        "rng": rng_states(),
        "config": cfg.to_flat_dict(),
        "inference": dict(info),
        "format": 1,
        "data_config": model_data_config(model),  # the normalisation inference must use (plain floats)
    }


def snapshot(obj):
    """A copy of ``obj`` that training cannot change: tensors copied to the CPU, containers rebuilt
    (the history list grows, the optimizer's moments are updated in place)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return t.to("cpu", copy=True) if t.device.type != "cpu" else t.clone()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class Writer:
    """Writes checkpoints on one background thread, one at a time.

    :meth:`submit` waits for the write in flight, then starts the next; :meth:`wait` returns when
    none is in flight and raises the error of a write that failed (a full disk fails the run at its
    next epoch, not silently). The thread is not a daemon: an interpreter that exits lets the write
    finish (and the atomic rename leaves the previous file whole if the process is killed).
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        # daemon=False explicitly: a thread inherits its creator's flag, and the W&B worker trains in a daemon.
        self._thread = threading.Thread(target=self._run, args=(job,), name="cvtrain-checkpoint", daemon=False)
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 - raised in the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


def _write(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _inference_state(state: dict) -> dict:
    return {k: v for k, v in state.items() if k in ("epoch", "global_step", "best_val_f1", "best_epoch")}


def save_epoch(ckpt_dir: Path, improved: bool, save_last: bool, *args, best_weights_only: bool = False,
               writer: Writer | None = None) -> None:
    """last.pt every epoch, best.pt when the metric improved: serialised once per epoch.

    best.pt becomes a hard link to the new last.pt (a copy where links fail); the next
    epoch's atomic replace of last.pt leaves best.pt's inode untouched. Without last.pt
    (``save_last`` False), best.pt is written alone, as weights only when ``best_weights_only``.
    With a ``writer``, the state is copied now and written on its thread.
    """
    if not (improved or save_last):
        return
    first = ckpt_dir / ("last.pt" if save_last else "best.pt")
    obj = contents(*args, weights_only=best_weights_only and not save_last)

    def write(obj: dict) -> None:
        _write(first, obj)
        if improved and save_last:
            tmp = ckpt_dir / f"best.pt.tmp{os.getpid()}"
            try:
                os.link(first, tmp)
            except OSError:
                shutil.copyfile(first, tmp)
            os.replace(tmp, ckpt_dir / "best.pt")

    if writer is None:
        write(obj)
        return
    writer.wait()  # the previous epoch's write ends before this one's copy is taken (memory: one copy)
    copy = snapshot(obj)
    writer.submit(lambda: write(copy))


#: What inference (predict, the leaderboard's best trial) reads from a checkpoint.
INFERENCE_KEYS = ("model", "config", "inference", "class_names", "format", "data_config")  # class_names: older files


def retain(ckpt_dir: Path, keep: str) -> None:
    """Apply ``keep_checkpoints`` to an ended run's checkpoint directory (see the module docstring)."""
    if keep not in KEEP_CHECKPOINTS:
        raise ValueError(f"keep_checkpoints={keep!r}; allowed: {', '.join(KEEP_CHECKPOINTS)}")
    best, last = ckpt_dir / "best.pt", ckpt_dir / "last.pt"
    if keep == "all":
        return
    if keep in ("best", "none"):
        last.unlink(missing_ok=True)  # best.pt may share its inode: then this frees nothing but the name
    if keep in ("last", "none"):
        best.unlink(missing_ok=True)
    if keep == "best" and best.exists():
        slim(best)


def slim(path: Path) -> None:
    """Rewrite ``path`` (atomically) with only what inference needs."""
    # Memory-mapped: the optimizer state (two thirds of the file) is never read. The run's own file.
    obj = _load(path, "cpu", trusted=True, mmap=True)
    if obj.get("weights_only"):
        return
    _write(path, {**{k: obj[k] for k in INFERENCE_KEYS if k in obj}, "state": _inference_state(obj.get("state", {})),
                  "weights_only": True})


class UnsafeCheckpointError(ValueError):
    """A checkpoint that holds more than tensors and plain data: opening it could run code."""


def read(path: str | os.PathLike, device="cpu") -> dict:
    """A checkpoint's contents, read as data only (tensors, numbers, strings, lists, dicts)."""
    return _load(path, device, trusted=False)


def _load(path, device, trusted: bool, mmap: bool = False) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if trusted:  # the run's own last.pt from an older cvtrain (numpy RNG state): resumable as before
            return torch.load(path, map_location=device, weights_only=False, mmap=mmap)
        raise UnsafeCheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data "
            f"({_offending_global(exc)}); opening it could run code, "
            "so it is not loaded. Use a checkpoint written by cvtrain, or re-save its state_dict "
            "with torch.save.") from None


def _offending_global(exc: Exception) -> str:
    """The line of torch's message that names what the file asked to import."""
    lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln]
    return lines[0] if lines else "not a weights-only pickle"


def load(path, model, optimizer, scheduler, scaler, device, own_dir: Path | None = None) -> TrainState:
    """Restore the whole training state from ``path``; ``own_dir``: the run's checkpoint directory."""
    trusted = own_dir is not None and Path(path).resolve().parent == Path(own_dir).resolve()
    obj = _load(path, device, trusted)
    if obj.get("weights_only"):
        raise ValueError(f"{path} holds weights only (an ended run's best.pt under keep_checkpoints=best): "
                         "training cannot resume from it. Keep whole checkpoints with keep_checkpoints=last or all.")
    model.load_state_dict(obj["model"])
    optimizer.load_state_dict(obj["optimizer"])
    if scheduler is not None and obj.get("scheduler") is not None:
        scheduler.load_state_dict(obj["scheduler"])
    if scaler is not None and obj.get("scaler") is not None:
        scaler.load_state_dict(obj["scaler"])
    set_rng_states(obj["rng"])
    return TrainState(**obj["state"])


def find_resume(resume: str | None, ckpt_dir: Path) -> Path | None:
    """``None``: no resume; ``"auto"``: last.pt when present; else a path that must exist."""
    if not resume:
        return None
    if resume == "auto":
        p = ckpt_dir / "last.pt"
        return p if p.exists() else None
    p = Path(resume)
    if not p.is_file():
        raise FileNotFoundError(f"--resume: checkpoint {p} does not exist")
    return p
