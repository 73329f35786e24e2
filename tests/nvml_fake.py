"""pynvml's own functions answering as a given machine would: the NVML boundary, faked with pynvml's types.

Handles are real ``c_nvmlDevice_t`` pointers, memory and utilisation real ``c_nvmlMemory_t`` /
``c_nvmlUtilization_t`` structures, UUIDs and names ``str`` and errors ``pynvml.NVMLError``
subclasses, as nvidia-ml-py returns them; anything not faked here reaches the real
library and fails, so code that calls an unexpected function shows up.
"""
import ctypes
from dataclasses import dataclass, field

import pynvml

GiB = 2**30


def uuid(i: int, kind: str = "GPU") -> str:
    return f"{kind}-{i:08x}-d72c-4106-c12f-20bd9faed9f6"


@dataclass
class Card:
    index: int
    name: str
    memory_total: int
    used: int  # bytes in use: tells the cards apart in the metrics
    uuid: str
    mig: bool = False
    parent: int | None = None


@dataclass
class Machine:
    """``names``: one GPU per entry, NVML index = position. ``no_permission``: GPUs a cgroup hides.
    ``mig``: GPU index -> number of MIG instances it is split into."""

    names: list[str]
    no_permission: set[int] = field(default_factory=set)
    mig: dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        self.cards = {}
        for i, name in enumerate(self.names):
            self.cards[0x1000 + i] = Card(i, name, 80 * GiB, (i + 1) * GiB, uuid(i))
            for k in range(self.mig.get(i, 0)):
                self.cards[0x2000 + 16 * i + k] = Card(i, f"{name} MIG 3g.40gb", 40 * GiB, (10 * i + k + 1) * GiB,
                                                       uuid(16 * i + k, "MIG"), mig=True, parent=i)

    def card(self, handle) -> Card:
        addr = ctypes.cast(handle, ctypes.c_void_p).value
        if addr not in self.cards:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.cards[addr]

    @staticmethod
    def handle(addr: int):
        return ctypes.cast(ctypes.c_void_p(addr), pynvml.c_nvmlDevice_t)

    def install(self, monkeypatch) -> "Machine":
        def err(code):
            raise pynvml.NVMLError(code)

        def by_index(i):
            if not 0 <= i < len(self.names):
                err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if i in self.no_permission:
                err(pynvml.NVML_ERROR_NO_PERMISSION)
            return self.handle(0x1000 + i)

        def by_uuid(u):
            for addr, c in self.cards.items():
                if c.uuid == u and (c.parent if c.mig else c.index) not in self.no_permission:
                    return self.handle(addr)
            err(pynvml.NVML_ERROR_NOT_FOUND)

        def mig_mode(h):
            c = self.card(h)
            if c.mig or "A100" not in c.name and "H100" not in c.name:
                err(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return [int(c.index in self.mig), int(c.index in self.mig)]

        def mig_handle(h, k):
            addr = 0x2000 + 16 * self.card(h).index + k
            if addr not in self.cards:
                err(pynvml.NVML_ERROR_NOT_FOUND)
            return self.handle(addr)

        def memory(h, version=None):
            c = self.card(h)
            m = pynvml.c_nvmlMemory_t()
            m.total, m.used, m.free = c.memory_total, c.used, c.memory_total - c.used
            return m

        def utilization(h):
            c = self.card(h)
            if c.mig:
                err(pynvml.NVML_ERROR_NOT_SUPPORTED)  # as on a real MIG instance
            u = pynvml.c_nvmlUtilization_t()
            u.gpu, u.memory = 10 * c.index + 5, 3
            return u

        def power(h):
            c = self.card(h)
            if c.mig:
                err(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return 100_000 + c.index  # milliwatts

        fakes = {
            "nvmlInit": lambda: None,
            "nvmlShutdown": lambda: None,
            "nvmlDeviceGetCount": lambda: len(self.names),
            "nvmlDeviceGetHandleByIndex": by_index,
            "nvmlDeviceGetHandleByUUID": by_uuid,
            "nvmlDeviceGetUUID": lambda h: self.card(h).uuid,
            "nvmlDeviceGetName": lambda h: self.card(h).name,
            "nvmlDeviceGetIndex": lambda h: self.card(h).index,
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceGetUtilizationRates": utilization,
            "nvmlDeviceGetTemperature": lambda h, sensor: 40 + self.card(h).index,
            "nvmlDeviceGetPowerUsage": power,
            "nvmlDeviceGetMigMode": mig_mode,
            "nvmlDeviceGetMaxMigDeviceCount": lambda h: 7 if self.card(h).index in self.mig else 0,
            "nvmlDeviceGetMigDeviceHandleByIndex": mig_handle,
        }
        for name, fn in fakes.items():
            monkeypatch.setattr(pynvml, name, fn)
        return self


def no_driver(monkeypatch) -> None:
    """A machine without the NVIDIA driver: nvmlInit fails as pynvml's does when libnvidia-ml is missing."""
    def init():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", init)


MIXED8 = ["NVIDIA A100-SXM4-80GB"] * 4 + ["NVIDIA H100 80GB HBM3"] * 4  # a mixed 8-GPU server
