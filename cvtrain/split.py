"""Which images validate a run: one split for all trials of a sweep, and the record of the split used.

A run's validation images follow ``split_seed``, or its ``seed`` when that is empty. Trials of one
sweep are ranked against each other, so they must share one split whatever their ``seed``: under a
sweep the split seed comes from the sweep (its stored seed locally, its id on W&B) unless the sweep
sets ``split_seed`` itself. A plain run keeps following its ``seed``.

The splits themselves: cvtrain.folds. This module imports no numpy: the trainer's command line loads
it before it blocks SIGTERM in every thread (cvtrain.stop.SignalWatch), and numpy's BLAS starts threads.
"""
from __future__ import annotations

import hashlib
from typing import Iterable


def split_seed_from_sweep_id(sweep_id: str) -> int:
    """A stable seed derived from a sweep's id (every machine of a W&B sweep derives the same)."""
    return int.from_bytes(hashlib.sha256(sweep_id.encode()).digest()[:4], "little") & 0x7FFFFFFF


def split_record(split_seed: int, val_ids: Iterable[str]) -> dict:
    """What a run's config records of its split: the seed used, the size and a short hash of the IDs."""
    ids = sorted(val_ids)
    digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]
    return {"split_seed": int(split_seed), "n_val": len(ids), "val_ids_sha1": digest}
