"""System metrics (pynvml, psutil) sampled in the background, and environment info.

The monitor reads the GPUs :mod:`cvtrain.gpus` says this process may use, the same devices the
worker trains on. With no GPU or no NVIDIA driver the GPU metrics are simply absent.
"""
from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from typing import Callable

import psutil
import timm
import torch

from .gpus import nvml_or_none, visible_handles


def _gpu_sample(nvml, i: int, h) -> dict:
    """Each metric on its own: a MIG instance, for one, reports memory but not utilisation or power."""
    readings = (
        lambda: {"util": float(nvml.nvmlDeviceGetUtilizationRates(h).gpu)},
        lambda: _memory(nvml.nvmlDeviceGetMemoryInfo(h)),
        lambda: {"temp_c": float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))},
        lambda: {"power_w": nvml.nvmlDeviceGetPowerUsage(h) / 1000.0},
    )
    out = {}
    for read in readings:
        try:
            out.update({f"gpu/{i}/{k}": v for k, v in read().items()})
        except Exception:  # noqa: BLE001 - a metric the device does not support is left out
            continue
    return out


def _memory(m) -> dict:
    return {"mem_used_gb": m.used / 2**30, "mem_percent": 100.0 * m.used / m.total}


def sample(nvml, handles: list, proc: psutil.Process) -> dict:
    out = {
        "sys/cpu_percent": psutil.cpu_percent(interval=None),
        "sys/ram_used_gb": psutil.virtual_memory().used / 2**30,
        "sys/ram_percent": psutil.virtual_memory().percent,
    }
    mem = proc.memory_info()
    out["sys/proc_rss_gb"] = mem.rss / 2**30
    if hasattr(mem, "shared"):  # Linux: file-backed resident pages, e.g. the memory-mapped image cache
        out["sys/proc_shared_gb"] = mem.shared / 2**30
    for i, h in enumerate(handles):
        out.update(_gpu_sample(nvml, i, h))
    return out


class SystemMonitor:
    """Samples every ``interval`` seconds on a daemon thread and hands each sample to ``sink``.

    Keeps the peak of every metric for the run summary.
    """

    def __init__(self, interval: float, sink: Callable[[dict], None] | None = None):
        self.interval = interval
        self.sink = sink
        self.peaks: dict[str, float] = {}
        self.latest: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = nvml_or_none()
        self._gpus = self._visible_handles()
        self._proc = psutil.Process()
        self._t0 = time.monotonic()

    def _visible_handles(self) -> list:
        if self._nvml is None:
            return []
        try:
            return visible_handles(self._nvml)
        except Exception:  # noqa: BLE001 - monitoring must never take the run down: no GPU metrics then
            return []

    def _record(self, s: dict) -> None:
        for k, v in s.items():
            self.peaks[k] = max(v, self.peaks.get(k, v))
        self.latest = s

    def _tick(self) -> None:
        s = sample(self._nvml, self._gpus, self._proc)
        self._record(s)
        if self.sink is not None:
            self.sink({**s, "sys/elapsed_s": time.monotonic() - self._t0})

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - monitoring must never take the run down
                continue

    def start(self) -> "SystemMonitor":
        psutil.cpu_percent(interval=None)  # prime the counter
        self._tick()
        self._thread = threading.Thread(target=self._run, name="cvtrain-sysmon", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._record(sample(self._nvml, self._gpus, self._proc))
        finally:
            if self._nvml is not None:
                with contextlib.suppress(Exception):  # shutting NVML down cannot fail the run
                    self._nvml.nvmlShutdown()
        return {f"{k}_peak": v for k, v in self.peaks.items()}


def environment_info() -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cuda_device_order": os.environ.get("CUDA_DEVICE_ORDER"),
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        # CUDA's own UUIDs, in cuda:i order: what gpu/i metrics must match (see visible_gpus)
        info["gpu_uuids"] = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
    info["timm"] = timm.__version__
    return info
