"""Which GPUs a process may use: what NVML sees, and ``CUDA_VISIBLE_DEVICES`` read as CUDA reads it.

One pure function (:func:`visible_gpus`) of the two: the launcher plans with it and the trainer's
system monitor reads the same devices the worker trains on. Imports no torch (nor anything that
does): the launcher, which must stay light, imports this module.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Mapping, NamedTuple


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
        import pynvml  # lazy: without an NVIDIA driver (or pynvml) this fails, and None says so

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
