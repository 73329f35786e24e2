"""System metrics (pynvml, psutil) sampled in the background, and environment info.

With no GPU or no NVIDIA driver the GPU metrics are simply absent.
"""
from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from typing import Callable

import psutil


def _nvml():
    """The initialised pynvml module, or None where there is no NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ImportError ...
        return None


def visible_gpu_indices(nvml, environ=os.environ) -> list[int]:
    """NVML indices of the GPUs this process may use (honours CUDA_VISIBLE_DEVICES)."""
    n = nvml.nvmlDeviceGetCount()
    spec = environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(range(n))
    out = []
    for tok in spec.split(","):
        tok = tok.strip()
        if tok.isdigit() and int(tok) < n:
            out.append(int(tok))
        elif tok and not tok.isdigit():  # a UUID
            try:
                out.append(nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByUUID(tok)))
            except Exception:  # noqa: BLE001
                continue
    return out


def sample(nvml, gpus: list[int], proc: psutil.Process) -> dict:
    out = {
        "sys/cpu_percent": psutil.cpu_percent(interval=None),
        "sys/ram_used_gb": psutil.virtual_memory().used / 2**30,
        "sys/ram_percent": psutil.virtual_memory().percent,
    }
    mem = proc.memory_info()
    out["sys/proc_rss_gb"] = mem.rss / 2**30
    if hasattr(mem, "shared"):  # Linux: file-backed resident pages, e.g. the memory-mapped image cache
        out["sys/proc_shared_gb"] = mem.shared / 2**30
    for i, idx in enumerate(gpus):
        try:
            h = nvml.nvmlDeviceGetHandleByIndex(idx)
            util = nvml.nvmlDeviceGetUtilizationRates(h)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            out[f"gpu/{i}/util"] = float(util.gpu)
            out[f"gpu/{i}/mem_used_gb"] = mem.used / 2**30
            out[f"gpu/{i}/mem_percent"] = 100.0 * mem.used / mem.total
            out[f"gpu/{i}/temp_c"] = float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))
            out[f"gpu/{i}/power_w"] = nvml.nvmlDeviceGetPowerUsage(h) / 1000.0
        except Exception:  # noqa: BLE001 - a metric the device does not support is left out
            continue
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
        self._nvml = _nvml()
        self._gpus = visible_gpu_indices(self._nvml) if self._nvml else []
        self._proc = psutil.Process()
        self._t0 = time.monotonic()

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
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    return info
