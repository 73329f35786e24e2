"""Batches from the decoded-image cache to the training device.

The DataLoader only slices: its sampler yields a whole batch of positions, and
the dataset answers with one fancy-index of the memory-mapped cache (no
per-item ``__getitem__``, no collate). Batches are pinned on CUDA, workers
persist across epochs, and :class:`DeviceBatches` copies the next batch to the
device (non-blocking, on a side stream) and augments it there
(:mod:`cvtrain.augment`) while the current one trains.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from .augment import augment_batch, batch_generator
from .config import AugmentConfig


def batch_loader(dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                 drop_last: bool = False, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = True) -> DataLoader:
    """A DataLoader whose every fetch is ``dataset[list of positions]``: one slice per batch.

    ``generator`` drives the shuffle and nothing else, so the order of an epoch depends on its
    state alone, not on the worker count or whether workers persist.

    A dataset that augments each sample itself (``dataset.aug``, ``augment_on=cpu``) draws with its
    epoch, which ``set_epoch`` changes in this process only: persistent workers would keep the first
    epoch's copy and repeat its augmentations every epoch, so its workers are made afresh each epoch.
    """
    if getattr(dataset, "aug", None) is not None:
        persistent_workers = False
    order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    # The DataLoader draws its workers' base seed from its own generator once per fresh iterator
    # (every epoch without persistent workers, once with them): give it one of its own, or it would
    # take that draw from the shuffle's generator (or the global RNG) and move what follows.
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(order, batch_size, drop_last),
                      num_workers=num_workers, pin_memory=pin_memory, generator=torch.Generator().manual_seed(0),
                      persistent_workers=persistent_workers and num_workers > 0)


class DeviceBatches:
    """``(x, y)`` batches of ``loader`` on ``device``, uint8 images augmented there when ``aug`` is given.

    The epoch comes from ``loader.dataset.epoch`` (``set_epoch`` on the dataset, as ever); batch
    ``i`` of an epoch is augmented with :func:`~cvtrain.augment.batch_generator` ``(seed, epoch, i)``,
    so the draws do not depend on the device, the worker count or an interruption.
    """

    def __init__(self, loader: DataLoader, device: torch.device | str, aug: AugmentConfig | None = None,
                 seed: int = 0):
        self.loader = loader
        self.device = torch.device(device)
        self.aug = aug
        self.seed = seed

    @property
    def dataset(self):
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = getattr(self.loader.dataset, "epoch", 0)
        cuda = self.device.type == "cuda"
        side = torch.cuda.Stream(self.device) if cuda else None
        batches = iter(self.loader)

        def load(i: int):
            batch = next(batches, None)
            if batch is None:
                return None
            x, y = batch
            with torch.cuda.stream(side) if cuda else contextlib.nullcontext():
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                if self.aug is not None:
                    x = augment_batch(x, self.aug, batch_generator(self.seed, epoch, i))
            return x, y

        i, nxt = 0, load(0)
        while nxt is not None:
            x, y = nxt
            if cuda:
                main = torch.cuda.current_stream(self.device)
                main.wait_stream(side)
                x.record_stream(main)  # the side stream's allocator must not reuse them while main still reads
                y.record_stream(main)
            i += 1
            nxt = load(i)  # queued before this batch trains: copy and augmentation overlap its compute
            yield x, y
