"""System metrics: GPU readings through NVML (faked here: the hardware boundary), CPU/RAM through psutil."""
import time
from types import SimpleNamespace

import psutil

from cvtrain.system import SystemMonitor, sample, visible_gpu_indices


class FakeNVML:
    NVML_TEMPERATURE_GPU = 0

    def nvmlDeviceGetCount(self):
        return 4

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=10 * h)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=2**30 * h, total=2**30 * 80)

    def nvmlDeviceGetTemperature(self, h, kind):
        return 40 + h

    def nvmlDeviceGetPowerUsage(self, h):
        return 100_000 + h


def test_visible_gpus_follow_cuda_visible_devices():
    assert visible_gpu_indices(FakeNVML(), {}) == [0, 1, 2, 3]
    assert visible_gpu_indices(FakeNVML(), {"CUDA_VISIBLE_DEVICES": "2,0"}) == [2, 0]
    assert visible_gpu_indices(FakeNVML(), {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpu_indices(FakeNVML(), {"CUDA_VISIBLE_DEVICES": "1,7"}) == [1]


def test_each_visible_gpu_is_reported_under_its_local_index():
    s = sample(FakeNVML(), [2, 3], psutil.Process())
    assert s["gpu/0/util"] == 20 and s["gpu/1/util"] == 30 and "gpu/2/util" not in s
    assert s["gpu/0/mem_used_gb"] == 2 and s["gpu/1/temp_c"] == 43 and s["gpu/0/power_w"] == 100.002
    assert s["sys/proc_rss_gb"] > 0


def test_monitor_without_a_gpu_samples_cpu_and_ram_only():
    seen = []
    mon = SystemMonitor(0.05, sink=seen.append).start()
    time.sleep(0.3)
    peaks = mon.stop()
    assert len(seen) >= 2 and all(not any(k.startswith("gpu/") for k in s) for s in seen)
    assert peaks["sys/proc_rss_gb_peak"] > 0 and "sys/elapsed_s" in seen[-1]
