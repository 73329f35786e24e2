"""The document transforms (cvtrain.ops): torchvision's meaning, identities bit-identical, the input left alone."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from cvtrain import ops

BILINEAR = TF.InterpolationMode.BILINEAR


def noise_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def smooth_images(n: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    # Geometric references differ by a level of rounding per bilinear tap: compare on smooth pages.
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g) * 255
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).round().to(torch.uint8)


def uniform(n: int, lo: float, hi: float, seed: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("op,ref", [(ops.brightness, TF.adjust_brightness), (ops.contrast, TF.adjust_contrast),
                                    (ops.gamma, TF.adjust_gamma)])
def test_photometric_ops_are_torchvisions_with_one_factor_per_sample(op, ref):
    x = noise_images(60)
    f = uniform(60, 0.3, 1.8)
    out = op(x, f)
    expected = torch.stack([ref(x[i], float(f[i])) for i in range(60)])
    assert torch.equal(out, expected)


@pytest.mark.parametrize("op,identity", [(ops.brightness, 1.0), (ops.contrast, 1.0), (ops.gamma, 1.0),
                                         (ops.rotate_any, 0.0), (ops.rotate_any, 360.0), (ops.downscale, 1.0),
                                         (ops.shadow, 0.0)])
def test_the_identity_parameter_leaves_samples_bit_identical_and_the_input_alone(op, identity):
    x = noise_images(8)
    before = x.clone()
    out = op(x, torch.full((8,), identity))
    assert torch.equal(out, x) and torch.equal(x, before) and out.data_ptr() != x.data_ptr()
    assert torch.equal(ops.perspective(x, torch.zeros(8, 4, 2)), x)


def _inside(n, size, warp) -> torch.Tensor:
    # Pixels torchvision samples wholly inside the page (its border blend with the fill differs).
    ones = torch.ones(n, 1, size, size)
    return torch.stack([warp(ones[i], i) for i in range(n)]) == 1


def test_rotate_any_is_torchvisions_rotation_scaled_to_fit_the_unchanged_canvas():
    x = smooth_images(40)
    angle = uniform(40, 0, 360)
    fit = [1 / (abs(math.cos(math.radians(a))) + abs(math.sin(math.radians(a)))) for a in angle.tolist()]

    def warp(img, i):  # torchvision's affine takes a clockwise angle
        return TF.affine(img, angle=-float(angle[i]), translate=[0, 0], scale=fit[i], shear=[0.0, 0.0],
                         interpolation=BILINEAR, fill=[255.0] * img.shape[0])

    out = ops.rotate_any(x, angle)
    ref = torch.stack([warp(x[i], i) for i in range(40)])
    inside = _inside(40, 48, warp).expand_as(out)
    assert inside.float().mean() > 0.5
    assert (out.int() - ref.int()).abs()[inside].max() <= 1
    # Scaled to fit: the whole page stays visible, as torchvision's rotate(expand=True) resized back shows it.
    black = torch.zeros(40, 3, 48, 48, dtype=torch.uint8)
    dark = (255 - ops.rotate_any(black, angle).float()).sum((1, 2, 3))
    expanded = torch.stack([TF.resize(TF.rotate(black[i], float(angle[i]), BILINEAR, expand=True, fill=[255] * 3),
                                      [48, 48], antialias=True) for i in range(40)])
    # torchvision rounds the expanded canvas up to whole pixels and blends the border lighter: within 10%
    assert torch.allclose(dark, (255 - expanded.float()).sum((1, 2, 3)), rtol=0.1)
    assert torch.allclose(dark, 255 * 3 * 48 * 48 * torch.tensor(fit) ** 2, rtol=0.03)
    assert (ops.rotate_any(black, torch.full((40,), 45.0))[:, :, 0, 0] == 255).all()  # white fill in the corners


def test_rotate_any_turns_counter_clockwise_like_torchvision():
    x = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    x[0, :, 0, :2] = 200  # a mark at the top left
    assert torch.equal(ops.rotate_any(x, torch.tensor([90.0]))[0], TF.rotate(x[0], 90.0))


def test_perspective_is_torchvisions_with_the_corners_moved_inwards():
    x = smooth_images(30)
    off = ops.perspective_offsets(torch.full((30,), 0.6), torch.Generator().manual_seed(3))
    assert off.shape == (30, 4, 2) and 0 <= off.min() and off.max() <= 0.3 and off.max() > 0.25
    start = [[0, 0], [47, 0], [47, 47], [0, 47]]
    inward = [[1, 1], [-1, 1], [-1, -1], [1, -1]]

    def warp(img, i):
        end = [[start[k][j] + inward[k][j] * float(off[i, k, j]) * 48 for j in range(2)] for k in range(4)]
        return TF.perspective(img, start, end, interpolation=BILINEAR, fill=[255.0] * img.shape[0])

    out = ops.perspective(x, off)
    ref = torch.stack([warp(x[i], i) for i in range(30)])
    inside = _inside(30, 48, warp).expand_as(out)
    assert inside.float().mean() > 0.3
    assert (out.int() - ref.int()).abs()[inside].max() <= 1
    outside = torch.stack([warp(torch.ones(1, 48, 48), i) for i in range(30)]).expand_as(out) == 0
    assert (out[outside] == 255).all()  # white paper where the page is not
    # On the page's border torchvision blends with a mask, darker than sampling (page - paper): never lighter.
    assert (out.int() - ref.int())[~inside].min() >= -1


def test_downscale_is_torchvisions_resize_down_and_back_up():
    x = noise_images(50, 40)
    f = uniform(50, 0.2, 1.0)
    out = ops.downscale(x, f)
    ref = torch.stack([TF.resize(TF.resize(x[i], [max(1, round(40 * float(f[i])))] * 2, antialias=True),
                                 [40, 40], antialias=True) for i in range(50)])
    assert torch.equal(out, ref)


def test_shadow_darkens_smoothly_from_the_lit_side_by_at_most_its_strength():
    x = torch.full((30, 3, 40, 40), 200, dtype=torch.uint8)
    s, a = uniform(30, 0, 1), uniform(30, 0, 360, seed=2)
    out = ops.shadow(x, s, a).float()
    assert (out.amax((1, 2, 3)) >= 199).all()
    assert torch.allclose(out.amin((1, 2, 3)), 200 * (1 - s), atol=0.02 * 200 + 1)
    row = ops.shadow(x[:1], torch.tensor([0.8]), torch.tensor([0.0]))[0, 0, 20].float()
    assert (row[1:] <= row[:-1]).all() and row[0] > row[-1] + 100  # angle 0: darker to the right
    step = (row[1:] - row[:-1]).abs()
    assert step.max() < 0.8 * 200 / 40 * 1.6  # smooth: no step much over the mean slope's


def test_blur_is_torchvisions_gaussian_blur():
    x = noise_images(40)
    sigma = uniform(40, 0.3, 1.5)
    out = ops.blur(x, sigma)
    for i in range(40):
        s = float(sigma[i])
        assert (out[i].int() - TF.gaussian_blur(x[i], [5, 5], [s, s]).int()).abs().max() <= 1


def test_noise_is_seeded_and_has_the_given_standard_deviation():
    x = torch.full((20, 3, 32, 32), 128, dtype=torch.uint8)
    std = uniform(20, 3, 15)
    a = ops.noise(x, std, seed=5)
    assert torch.equal(a, ops.noise(x, std, seed=5)) and not torch.equal(a, ops.noise(x, std, seed=6))
    assert torch.allclose((a.float() - 128).flatten(1).std(1), std, rtol=0.08, atol=0.3)


def test_jpeg_takes_a_tensor_or_a_list_of_qualities():
    x = noise_images(6, 24)
    q = torch.tensor([20, 30, 40, 50, 60, 90])
    assert torch.equal(ops.jpeg(x, q), ops.jpeg(x, q.tolist()))
    assert not torch.equal(ops.jpeg(x, q), x)


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.uint8)])
def test_a_batch_that_is_not_uint8_rgb_is_refused(bad):
    with pytest.raises(ValueError, match="uint8 batch"):
        ops.rotate_any(bad, torch.zeros(2))


def test_one_parameter_per_sample_is_required():
    with pytest.raises(ValueError, match="3 parameters for a batch of 2"):
        ops.brightness(noise_images(2), torch.ones(3))
