"""cvsweep shift: each statistic against a known synthetic shift, the JSON interface, bad input."""
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFilter

from agent.cli import cli
from cvtrain import shift_stats as S
from cvtrain.demo_data import TEST_SHIFT_FILE

FIGURES = ("brightness_mean", "contrast_mean", "laplacian_var_median", "aspect_ratio_median", "not_upright_share",
           "profile")


def page(seed=0, w=120, h=160) -> Image.Image:
    """A white page with dark text lines: the structure the orientation estimate reads."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (w, h), (235, 235, 235))
    d = ImageDraw.Draw(im)
    for y in range(12, h - 12, 9):
        d.rectangle((10, y, 10 + int(rng.integers(40, w - 20)), y + 3), fill=(40, 40, 40))
    return im


def batch(images, size=96):
    x = torch.stack([torch.from_numpy(np.array(im.resize((size, size), Image.BILINEAR))).permute(2, 0, 1)
                     for im in images])
    return x, np.array([im.size for im in images], dtype=float)


def test_brightness_and_contrast_follow_a_known_gain():
    x, sz = batch([page(i) for i in range(4)])
    brighter = (x.float() * 0.8).round().to(torch.uint8)
    a, b = S.image_stats(x, sz), S.image_stats(brighter, sz)
    assert b["brightness"] / a["brightness"] == pytest.approx(np.full(4, 0.8), rel=0.01)
    assert b["contrast"] / a["contrast"] == pytest.approx(np.full(4, 0.8), rel=0.02)


def test_blur_lowers_the_laplacian_variance_and_noise_is_measured_as_its_std():
    ims = [page(i) for i in range(4)]
    sharp, sz = batch(ims)
    blurred, _ = batch([im.filter(ImageFilter.GaussianBlur(1.5)) for im in ims])
    assert (S.image_stats(blurred, sz)["laplacian_var"] < 0.5 * S.image_stats(sharp, sz)["laplacian_var"]).all()
    flat = torch.full((2, 3, 96, 96), 128.0)
    noisy = (flat + 6 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(0))).round().to(torch.uint8)
    assert S.image_stats(noisy)["noise"] == pytest.approx(np.full(2, 6.0), rel=0.1)


@pytest.mark.parametrize("angle", [0, 3, 17, 30, 45, 62, 90, 123, 200, 270, 301])
def test_orientation_finds_known_rotations_of_a_text_page(angle):
    im = page(angle).rotate(angle, expand=True, fillcolor=(255, 255, 255), resample=Image.BILINEAR)
    x, sz = batch([im])
    st = S.image_stats(x, sz)
    off_axis = min(angle % 90, 90 - angle % 90)
    if off_axis > 2:  # the skew is the angle modulo 90 (sign: screen coordinates)
        assert abs(abs(st["skew_deg"][0]) - off_axis) < 3, st["skew_deg"]
    # upright and upside down read as upright (180 is not detectable); on its side or skewed, as not
    expect = off_axis > S.SKEW_DEG or angle in (90, 270)
    assert bool(st["not_upright"][0]) == expect


def _cli(*args):
    return CliRunner().invoke(cli, ["shift", *map(str, args)], catch_exceptions=False)


def test_json_has_train_and_test_figures_and_the_demo_rotation_share_is_recovered(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CVTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "shift.yaml"
    res = _cli(demo_dir, "--format", "json", "--size", "64", "--max-images", "60", "-o", out)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    for side in ("train", "test"):
        assert set(FIGURES) <= set(doc[side])
    assert "per_class" in doc["train"] and len(doc["train"]["per_class"]) == 17
    truth = json.loads((demo_dir / TEST_SHIFT_FILE).read_text())["profile"]
    prof = doc["test"]["profile"]
    assert doc["test"]["brightness_mean"] > doc["train"]["brightness_mean"]
    assert doc["test"]["laplacian_var_median"] < doc["train"]["laplacian_var_median"]
    assert prof["brightness"] > 1.05 and prof["blur"] > 0.3
    assert abs(prof.get("rotate_any", 0) - truth["rotate_any"]) < 0.3
    assert "val_shift:" in out.read_text()
    # the written profile is a val_shift setting as it is
    from cvtrain.config import mapping_layer, resolve
    assert resolve(mapping_layer({"val_shift": str(out)}, "t")).experiment.val_shift == prof


def _copy(demo_dir, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(demo_dir, d)
    return d


@pytest.mark.parametrize("damage, words", [
    (lambda d: shutil.rmtree(d / "test"), "no test folder"),
    (lambda d: [p.unlink() for p in (d / "test").iterdir()], "holds no images"),
    (lambda d: (d / "test" / "broken.jpg").write_bytes(b"not a jpeg"), "broken.jpg"),
])
def test_bad_data_is_one_line_exit_2_and_nothing_written(demo_dir, tmp_path, damage, words):
    d = _copy(demo_dir, tmp_path)
    damage(d)
    out = tmp_path / "shift.yaml"
    res = _cli(d, "--size", "48", "--max-images", "500", "-o", out)
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 2 and len(errors) == 1 and words in errors[0], res.output
    assert not out.exists()
