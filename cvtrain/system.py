"""System metrics (pynvml, psutil) sampled in the background, and environment info.

Which GPUs a process may use is one pure function of ``CUDA_VISIBLE_DEVICES`` and
what NVML sees (:func:`visible_gpus`); the launcher plans with it and the monitor
reads the same devices the worker trains on. With no GPU or no NVIDIA driver the
GPU metrics are simply absent.
"""
from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping, NamedTuple

import psutil


@dataclass(frozen=True)
class Gpu:
    """One device as NVML reports it.

    ``index`` is NVML's (PCI bus order, as nvidia-smi numbers GPUs; a MIG instance
    carries its GPU's). ``token`` is how ``CUDA_VISIBLE_DEVICES`` names it to a child
    process, set by :func:`visible_gpus`.
    """

    index: int
    uuid: str
    name: str
    memory_total: int  # bytes
    mig_instance: bool = False  # a MIG slice of a GPU ("MIG-..." UUID)
    mig_enabled: bool = False  # a GPU split into MIG instances: CUDA uses the instances, not the GPU
    token: str = ""

    def describe(self) -> str:
        return f"GPU {self.index} ({self.uuid}, {self.name}, {self.memory_total / 2**30:.0f} GiB)"


class Visible(NamedTuple):
    gpus: list[Gpu]
    ignored: list[str]  # CUDA_VISIBLE_DEVICES entries CUDA skips: the first that names no device, and all after


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)  # older pynvml returned bytes


def nvml_or_none():
    """The initialised pynvml module, or None where there is no NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ImportError ...
        return None


def _describe(nvml, handle, index: int, **kw) -> Gpu:
    return Gpu(index=index, uuid=_text(nvml.nvmlDeviceGetUUID(handle)), name=_text(nvml.nvmlDeviceGetName(handle)),
               memory_total=int(nvml.nvmlDeviceGetMemoryInfo(handle).total), **kw)


def _mig_instances(nvml, handle, index: int) -> list[Gpu]:
    try:
        if nvml.nvmlDeviceGetMigMode(handle)[0] != nvml.NVML_DEVICE_MIG_ENABLE:
            return []
        slots = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    except nvml.NVMLError:  # NotSupported: a GPU without MIG
        return []
    out = []
    for i in range(slots):
        try:
            out.append(_describe(nvml, nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i), index, mig_instance=True))
        except nvml.NVMLError:  # NotFound: an empty slot
            continue
    return out


def nvml_gpus(nvml) -> list[Gpu]:
    """Every GPU (then its MIG instances) this process can open, in NVML's (PCI bus) order.

    A GPU whose handle NVML refuses (NoPermission: a cgroup, as SLURM's ConstrainDevices
    sets up, keeps it from this job) is left out: CUDA cannot open it either, and
    numbers only the ones it can.
    """
    out = []
    for i in range(nvml.nvmlDeviceGetCount()):
        try:
            h = nvml.nvmlDeviceGetHandleByIndex(i)
        except nvml.NVMLError:
            continue
        mig = _mig_instances(nvml, h, i)
        out.append(_describe(nvml, h, i, mig_enabled=bool(mig)))
        out += mig
    return out


def _leading_int(token: str) -> int:
    """CUDA reads an index like strtoul: ``1gpu2`` is 1; no leading digit, or a sign, ends the list."""
    digits = len(token) - len(token.lstrip("0123456789"))
    return int(token[:digits]) if digits else -1


def _by_uuid(token: str, kind: str, gpus: list[Gpu]) -> Gpu | None:
    """The device whose UUID ``token`` is, or uniquely begins (CUDA takes a unique prefix)."""
    if not token.startswith(kind):
        return None
    found = [g for g in gpus if g.uuid.startswith(token) and g.mig_instance == (kind == "MIG-")]
    return found[0] if len(found) == 1 else None


def visible_gpus(cuda_visible_devices: str | None, gpus: list[Gpu]) -> Visible:
    """The devices a process may use, in the order CUDA numbers them (``cuda:0`` first).

    ``cuda_visible_devices``: the process's ``CUDA_VISIBLE_DEVICES`` (None: unset; "": no
    GPU) holding indices, GPU UUIDs or MIG UUIDs; indices count the GPUs in ``gpus``
    (from :func:`nvml_gpus`) in PCI bus order, as CUDA does with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. Each returned device's ``token`` keeps the form it
    was given in (UUIDs stay UUIDs); unset, tokens are indices (MIG instances: UUIDs).
    Parsed as CUDA does (and torch's ``_parse_visible_devices`` models): the first entry
    sets the form, the first entry that names no device ends the list (``-1`` hides
    every GPU), and a device named twice leaves none.
    """
    whole = [g for g in gpus if not g.mig_instance]
    if cuda_visible_devices is None:
        pos = {g.uuid: i for i, g in enumerate(whole)}
        return Visible([replace(g, token=g.uuid if g.mig_instance else str(pos[g.uuid]))
                        for g in gpus if not g.mig_enabled], [])
    tokens = [t.strip() for t in cuda_visible_devices.split(",")] if cuda_visible_devices.strip() else []
    kind = next((k for k in ("GPU-", "MIG-") if tokens and tokens[0].startswith(k)), None)
    out: list[Gpu] = []
    for n, tok in enumerate(tokens):
        if kind:
            g = _by_uuid(tok, kind, gpus)
        else:
            i = _leading_int(tok)
            g = whole[i] if 0 <= i < len(whole) else None
        if g is None:
            return Visible(out, tokens[n:])
        if any(o.uuid == g.uuid for o in out):
            return Visible([], tokens)
        out.append(replace(g, token=tok))
    return Visible(out, [])


def visible_handles(nvml, environ: Mapping[str, str] = os.environ) -> list:
    """NVML handles of this process's GPUs, in CUDA's order: metrics label ``gpu/i`` is ``cuda:i``."""
    gpus = visible_gpus(environ.get("CUDA_VISIBLE_DEVICES"), nvml_gpus(nvml)).gpus
    return [nvml.nvmlDeviceGetHandleByUUID(g.uuid) for g in gpus]


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
    import torch

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
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    return info
