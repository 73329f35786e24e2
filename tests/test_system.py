"""System metrics: GPU readings through pynvml (its functions answering as an 8-GPU server would: the
hardware boundary), CPU/RAM through psutil. ``gpu/i`` must be the card the worker trains on as ``cuda:i``."""
import time

import psutil
import pynvml
import pytest
from nvml_fake import MIXED8, Machine, no_driver, uuid

from agent.launcher import build_specs, nvml_view, parse_gpus, plan_groups
from cvtrain.gpus import visible_gpus, visible_handles
from cvtrain.system import SystemMonitor, sample


@pytest.fixture
def server(monkeypatch):
    return Machine(MIXED8).install(monkeypatch)


def gpu_readings(monkeypatch, cuda_visible_devices):
    """What a worker's monitor reports, given its CUDA_VISIBLE_DEVICES."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible_devices)
    seen = []
    mon = SystemMonitor(60, sink=seen.append).start()
    peaks = mon.stop()
    return {k: v for k, v in seen[0].items() if k.startswith("gpu/")}, peaks


@pytest.mark.parametrize("form", ["indices", "uuids"])
def test_metrics_read_the_gpus_named_by_cuda_visible_devices_in_their_order(server, monkeypatch, form):
    cvd = "5,2" if form == "indices" else f"{uuid(5)},{uuid(2)}"
    gpu, peaks = gpu_readings(monkeypatch, cvd)
    assert gpu["gpu/0/mem_used_gb"] == 6 and gpu["gpu/0/util"] == 55 and gpu["gpu/0/temp_c"] == 45  # GPU 5
    assert gpu["gpu/1/mem_used_gb"] == 3 and gpu["gpu/1/power_w"] == 100.002  # GPU 2
    assert gpu["gpu/0/mem_percent"] == pytest.approx(100 * 6 / 80)
    assert not any(k.startswith("gpu/2/") for k in gpu)
    assert peaks["gpu/0/mem_used_gb_peak"] == 6


def test_a_worker_reads_the_card_the_launcher_gave_it(server, monkeypatch):
    # Launcher under SLURM's CUDA_VISIBLE_DEVICES=2,5,7 with --gpus 0,2: w1 trains on GPU 7.
    visible = visible_gpus("2,5,7", nvml_view())
    w1 = build_specs("s", "local", plan_groups(parse_gpus("0,2", visible)), {}, "/s", cpus=[0, 1])[1]
    assert w1.gpus[0].index == 7
    gpu, _ = gpu_readings(monkeypatch, w1.env["CUDA_VISIBLE_DEVICES"])
    assert gpu["gpu/0/mem_used_gb"] == 8 and "gpu/1/util" not in gpu


def test_no_gpu_metrics_when_cuda_visible_devices_is_empty(server, monkeypatch):
    assert gpu_readings(monkeypatch, "")[0] == {}


def test_in_a_cgroup_indices_count_the_gpus_the_job_may_open(monkeypatch):
    Machine(MIXED8, no_permission={0, 1, 2, 4, 5, 7}).install(monkeypatch)
    gpu, _ = gpu_readings(monkeypatch, "1")
    assert gpu["gpu/0/mem_used_gb"] == 7  # GPU 6: the second the job may open


def test_a_mig_instance_reports_what_it_supports(monkeypatch):
    Machine(MIXED8, mig={3: 2}).install(monkeypatch)
    gpu, _ = gpu_readings(monkeypatch, uuid(16 * 3 + 1, "MIG"))
    assert gpu["gpu/0/mem_used_gb"] == 32 and gpu["gpu/0/mem_percent"] == pytest.approx(80.0)
    assert "gpu/0/util" not in gpu and "gpu/0/power_w" not in gpu  # NotSupported on a MIG instance


def test_sample_labels_handles_by_position(server):
    handles = visible_handles(pynvml, {"CUDA_VISIBLE_DEVICES": "3"})
    s = sample(pynvml, handles, psutil.Process())
    assert s["gpu/0/mem_used_gb"] == 4 and s["sys/proc_rss_gb"] > 0


def test_monitor_without_a_gpu_samples_cpu_and_ram_only(monkeypatch):
    no_driver(monkeypatch)
    seen = []
    mon = SystemMonitor(0.05, sink=seen.append).start()
    time.sleep(0.3)
    peaks = mon.stop()
    assert len(seen) >= 2 and all(not any(k.startswith("gpu/") for k in s) for s in seen)
    assert peaks["sys/proc_rss_gb_peak"] > 0 and "sys/elapsed_s" in seen[-1]
