"""One epoch of a run: the training pass over the batches and the evaluation pass."""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .metrics import epoch_metrics


class NonFiniteLossError(RuntimeError):
    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(f"loss became {value} at epoch {epoch}, global step {step}: the run stops as failed. "
                         "Lower learning_rate, add warmup_epochs or grad_clip, or turn amp off.")


def train_one_epoch(model, loader, optimizer, loss_fn, normalize, *, epoch: int, global_step: int,
                    mixup=None, autocast=contextlib.nullcontext, scaler=None, grad_clip=None,
                    log_interval: int = 20, log_fn=None, stop_event: threading.Event | None = None,
                    progress: bool = False) -> tuple[dict, int, bool]:
    """One pass over ``loader``. Returns (metrics, global_step, interrupted)."""
    model.train()
    device = normalize.mean.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, unit="batch")
    for i, (x, y) in enumerate(bar):
        if stop_event is not None and stop_event.is_set():
            return {}, global_step, True
        x = normalize(x)
        y = y.to(device, non_blocking=True)
        target = y
        if mixup is not None:
            x, target = mixup(x, y)
        with autocast():
            out = model(x)
            loss = loss_fn(out, target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        global_step += 1
        ld = loss.detach()
        # No host sync per batch: sums and the first bad step stay on the device.
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(ld), torch.tensor(global_step, device=device), first_bad)
        loss_sum += ld.float() * y.shape[0]
        correct += (out.detach().argmax(1) == y).sum()
        seen += y.shape[0]
        if global_step % log_interval == 0 or i == len(loader) - 1:
            bad = int(first_bad)
            if bad >= 0:
                raise NonFiniteLossError(epoch, bad, float("nan") if math.isnan(ld.item()) else ld.item())
            if log_fn is not None and global_step % log_interval == 0:
                log_fn({"batch/loss": ld.item(), "global_step": global_step})
    if seen == 0:
        return {"train_loss": float("nan"), "train_acc": float("nan")}, global_step, False
    return {"train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen}, global_step, False


@torch.no_grad()
def evaluate(model, loader, normalize, num_classes: int, autocast=contextlib.nullcontext):
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total, n = 0.0, 0
    probs, labels = [], []
    for x, y in loader:
        x = normalize(x)
        y = y.to(x.device)
        with autocast():
            out = model(x)
        total += float(loss_fn(out.float(), y))
        n += y.shape[0]
        probs.append(torch.softmax(out.float(), dim=1).cpu())
        labels.append(y.cpu())
    y_true = torch.cat(labels).numpy() if labels else np.zeros(0, dtype=int)
    p = torch.cat(probs).numpy() if probs else np.zeros((0, num_classes), dtype=np.float32)
    y_pred = p.argmax(1) if len(p) else np.zeros(0, dtype=int)
    m = epoch_metrics(y_true, y_pred)
    return {"val_loss": total / max(n, 1), "val_acc": m["acc"], "val_f1": m["f1"]}, y_true, y_pred, p

