"""scripts/gpu_check.py, prepared for a machine with a GPU, stops at once and says so where there is none."""
import os
import subprocess
import time

import pytest
from conftest import PY, ROOT

from agent.launcher import nvml_view


@pytest.mark.parametrize("hide", [True, False], ids=["cuda-visible-devices-empty", "no-driver"])
def test_gpu_check_refuses_cleanly_without_a_gpu(tmp_path, hide):
    if not hide and nvml_view():
        pytest.skip("this machine has a GPU")
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if hide:
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.monotonic()
    res = subprocess.run([PY, str(ROOT / "scripts" / "gpu_check.py")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "gpu_check: no NVIDIA GPU visible here" in res.stderr and "nothing was checked" in res.stderr
    assert time.monotonic() - t0 < 60 and not list(tmp_path.iterdir())  # stopped before making data or a sweep
