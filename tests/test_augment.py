"""The documents' augmentations, batched on the device: rates, meaning, determinism, a look."""
import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cvtrain import augment as A
from cvtrain import ops
from cvtrain.config import AugmentConfig
from cvtrain.sample_augment import augment

N = 3000          # samples per rate check: 3-sigma binomial bounds of a few percent
NONE = dict(rotate=0.0, flip=0.0, affine=0.0, blur=0.0, noise=0.0, jpeg=0.0)


def only(op: str, p: float) -> AugmentConfig:
    return AugmentConfig(**{**NONE, op: p})


def noise_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    # Random pixels: no rotation, flip, blur, noise or JPEG leaves such an image as it was.
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def within_3_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 3 * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("op,p", [("rotate", 0.5), ("flip", 0.3), ("affine", 0.3), ("blur", 0.1), ("noise", 0.15),
                                  ("jpeg", 0.1), ("rotate", 0.0), ("jpeg", 1.0)])
def test_each_operation_changes_its_share_of_samples_and_leaves_the_rest_bit_identical(op, p):
    size = 32 if op == "affine" else 16  # a sub-pixel affine of a 16-px image can round to no change at all
    x = noise_images(N, size)
    g = A.batch_generator(7, 1, 0)
    chosen = A.draw(N, only(op, p), A.batch_generator(7, 1, 0)).applied(op)
    out = A.augment_batch(x, only(op, p), g)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    changed = (out != x).flatten(1).any(1)
    assert not (changed & ~chosen).any(), "a sample the coin did not choose was changed"
    assert torch.equal(out[~chosen], x[~chosen])
    assert within_3_sigma(int(chosen.sum()), N, p), (int(chosen.sum()), N * p)
    if op == "affine":  # a few draws are within half a pixel of the identity everywhere
        assert int((chosen & ~changed).sum()) <= 0.01 * N * p
    else:
        assert torch.equal(changed, chosen)


def test_strengths_are_independent_draws_in_a_fixed_layout():
    # Raising one strength must not move the others' choices (a sweep varies them one by one).
    a = A.draw(500, AugmentConfig(rotate=0.5, flip=0.3, affine=0.3, blur=0.1, noise=0.1, jpeg=0.1), A.batch_generator(1, 2, 3))
    b = A.draw(500, AugmentConfig(rotate=0.5, flip=0.3, affine=0.9, blur=0.1, noise=0.1, jpeg=0.1), A.batch_generator(1, 2, 3))
    for op in ("rotate", "flip", "blur", "noise", "jpeg"):
        assert torch.equal(a.applied(op), b.applied(op)), op
    assert (a.applied("affine") <= b.applied("affine")).all() and b.applied("affine").sum() > a.applied("affine").sum()
    both = a.applied("rotate") & a.applied("flip")
    assert within_3_sigma(int(both.sum()), 500, 0.5 * 0.3)


def test_rotations_and_flips_are_exact_quarter_turns_and_mirror_images():
    x = noise_images(N)
    d = A.draw(N, AugmentConfig(**{**NONE, "rotate": 0.6}), A.batch_generator(0, 0, 0))
    out = A.apply(x, d)
    for k in (1, 2, 3):
        rows = d.quarter_turns == k
        assert torch.equal(out[rows], torch.rot90(x[rows], k, dims=(2, 3)))
        assert within_3_sigma(int(rows.sum()), N, 0.6 / 3)
    d = A.draw(N, AugmentConfig(**{**NONE, "flip": 1.0}), A.batch_generator(0, 0, 1))
    out = A.apply(x, d)
    lr, tb = d.flip == 1, d.flip == 2
    assert torch.equal(out[lr], x[lr].flip(3)) and torch.equal(out[tb], x[tb].flip(2))
    assert within_3_sigma(int(lr.sum()), N, 0.5) and int(lr.sum() + tb.sum()) == N


def test_affine_is_torchvisions_affine_with_the_drawn_parameters_on_white_paper():
    from torchvision.transforms.v2 import functional as TF

    x = noise_images(200, 32)
    d = A.draw(200, only("affine", 1.0), A.batch_generator(0, 3, 0))
    assert d.angle.abs().max() <= 10 and d.shift.abs().max() <= 0.05 and d.angle.abs().max() > 9
    assert 0.9 <= d.scale.min() and d.scale.max() <= 1.1 and d.scale.max() - d.scale.min() > 0.18
    out = A.apply(x, d)
    ref = torch.stack([TF.affine(x[i], angle=float(d.angle[i]), translate=[float(d.shift[i, 0]) * 32,
                                                                          float(d.shift[i, 1]) * 32],
                                 scale=float(d.scale[i]), shear=[0.0, 0.0], fill=[255] * 3) for i in range(200)])
    assert (out != ref).float().mean() < 1e-3  # nearest sampling: only float ties at pixel boundaries differ
    black = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    shrunk = A.sample_nearest(black, A.affine_theta(torch.tensor([0.0]), torch.zeros(1, 2), torch.tensor([0.9]), 64, 64),
                              fill=255)
    assert (shrunk[0, :, 0, :] == 255).all() and (shrunk[0, :, 32, 32] == 0).all()  # paper around, page inside


def test_affine_sampling_is_grid_sample_nearest_over_affine_grid():
    import torch.nn.functional as F

    x = noise_images(64, 40)[:, :, :, :24].contiguous()  # not square: the normalisation must hold per axis
    g = A.batch_generator(0, 0, 9)
    d = A.draw(64, only("affine", 1.0), g)
    theta = A.affine_theta(d.angle, d.shift, d.scale, 40, 24)
    grid = F.affine_grid(theta, (64, 3, 40, 24), align_corners=False)
    ref = F.grid_sample(x.float() - 255, grid, mode="nearest", align_corners=False).add(255).round().to(torch.uint8)
    assert (A.sample_nearest(x, theta, fill=255) != ref).float().mean() < 1e-3


def test_blur_is_torchvisions_gaussian_blur_at_the_drawn_sigma():
    from torchvision.transforms.v2 import functional as TF

    x = noise_images(300)
    d = A.draw(300, only("blur", 1.0), A.batch_generator(0, 0, 2))
    assert 0.3 <= d.sigma.min() and d.sigma.max() <= 1.5 and d.sigma.max() - d.sigma.min() > 1.1
    out = A.apply(x, d)
    for i in range(0, 300, 7):
        s = float(d.sigma[i])
        ref = TF.gaussian_blur(x[i], kernel_size=[5, 5], sigma=[s, s])
        assert (out[i].int() - ref.int()).abs().max() <= 1, i


def test_noise_has_the_drawn_standard_deviation():
    x = torch.full((400, 3, 32, 32), 128, dtype=torch.uint8)  # mid-grey: no clipping
    d = A.draw(400, only("noise", 1.0), A.batch_generator(0, 0, 3))
    assert 3 <= d.noise_std.min() and d.noise_std.max() <= 15 and d.noise_std.max() - d.noise_std.min() > 10
    diff = (A.apply(x, d).float() - 128).flatten(1)
    assert torch.allclose(diff.std(1), d.noise_std, rtol=0.08, atol=0.3)
    assert diff.mean(1).abs().max() < 1.5
    assert (diff.std(1)[1:] != diff.std(1)[:-1]).all()  # each sample its own noise


def test_jpeg_damage_is_pils_at_the_drawn_quality():
    x = noise_images(120, 24)
    d = A.draw(120, only("jpeg", 1.0), A.batch_generator(0, 0, 4))
    assert d.quality.min() == 20 and d.quality.max() == 59
    out = A.apply(x, d)
    for i in range(0, 120, 11):
        buf = io.BytesIO()
        Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=int(d.quality[i]))
        ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), ref), i


def test_same_seed_epoch_and_batch_give_the_same_batch_and_the_input_is_left_alone():
    x = noise_images(64, 24)
    before = x.clone()
    aug = AugmentConfig(rotate=1, flip=1, affine=1, blur=1, noise=1, jpeg=1)
    a = A.augment_batch(x, aug, A.batch_generator(5, 2, 3))
    assert torch.equal(x, before)
    assert torch.equal(a, A.augment_batch(x, aug, A.batch_generator(5, 2, 3)))
    for other in ((5, 2, 4), (5, 3, 3), (6, 2, 3)):
        assert not torch.equal(a, A.augment_batch(x, aug, A.batch_generator(*other))), other
    assert a.is_contiguous() and a.dtype == torch.uint8


def test_channels_last_input_gives_the_same_result():
    # The loader hands over NCHW views of the cache's NHWC rows.
    x = noise_images(32, 24)
    nhwc_view = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    aug = AugmentConfig(rotate=0.5, flip=0.5, affine=0.5, blur=0.5, noise=0.5, jpeg=0.5)
    assert torch.equal(A.augment_batch(x, aug, A.batch_generator(0, 0, 0)),
                       A.augment_batch(nhwc_view, aug, A.batch_generator(0, 0, 0)))


def test_a_grid_of_augmented_documents_shows_each_operation_where_it_applies(demo_dir, cache_dir, tmp_path):
    """augment-grid.png under the test's tmp_path (pytest keeps the last three runs' for a look): rows are
    documents; columns the original, each operation alone at strength 1, then the defaults."""
    from cvtrain import data as D
    from cvtrain.config import DataConfig

    idx = D.load_index(DataConfig(data_dir=str(demo_dir)))
    arr = D.load_or_build_cache(idx.paths, 128, "pad", cache_dir, progress=False).array
    docs = torch.from_numpy(np.array(arr[::11][:6])).permute(0, 3, 1, 2)
    recipes = [only(op, 1.0) for op in A.OPS] + [AugmentConfig()]
    seeds = [A.batch_generator(0, 0, i) for i in range(len(A.OPS))] + [A.batch_generator(0, 0, 99)]
    columns = [docs.clone()]
    for aug, g, k in zip(recipes, seeds, [*range(len(A.OPS)), 99]):
        chosen = A.draw(len(docs), aug, A.batch_generator(0, 0, k))
        col = A.augment_batch(docs, aug, g)
        touched = torch.stack([chosen.applied(op) for op in A.OPS]).any(0)
        for row in range(len(docs)):  # a tile differs from its document exactly where an operation applied
            assert torch.equal(col[row], docs[row]) != bool(touched[row]), (aug, row)
        columns.append(col)
    assert all(chosen.applied(op).all() for op, chosen in
               ((op, A.draw(len(docs), only(op, 1.0), A.batch_generator(0, 0, i))) for i, op in enumerate(A.OPS)))
    grid = torch.cat([torch.cat(list(col), dim=1) for col in columns], dim=2)  # (3, rows*128, cols*128)
    assert torch.equal(grid[:, :, :128], torch.cat(list(docs), dim=1))  # the first column is the source itself
    out = tmp_path / "augment-grid.png"
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(out)
    with Image.open(out) as im:
        assert im.size == (128 * (len(A.OPS) + 2), 128 * 6)
        assert np.array_equal(np.asarray(im), grid.permute(1, 2, 0).numpy())  # PNG keeps every pixel


DOC_STRONG = dict(rotate_any_max=180.0, brightness_max=0.5, contrast_max=0.5, gamma_max=1.0, perspective_max=0.6,
                  downscale_min=0.3, shadow_max=0.9)


@pytest.mark.parametrize("op,p", [("rotate_any", 0.3), ("brightness", 0.5), ("contrast", 0.2), ("gamma", 0.4),
                                  ("perspective", 0.3), ("downscale", 0.25), ("shadow", 0.6), ("shadow", 0.0)])
def test_each_document_transform_changes_its_share_of_samples_and_leaves_the_rest_bit_identical(op, p):
    n = 400  # the geometric ops cost more per sample than the quarter turns
    x = noise_images(n, 24)
    aug = AugmentConfig(**{**NONE, **DOC_STRONG, op: p})
    d = A.draw(n, aug, A.batch_generator(3, 0, 1))
    out = A.apply(x, d)
    chosen = d.applied(op)
    changed = (out != x).flatten(1).any(1)
    assert torch.equal(out[~chosen], x[~chosen]) and not (changed & ~chosen).any()
    assert within_3_sigma(int(chosen.sum()), n, p), (int(chosen.sum()), n * p)
    # A draw next to the identity (a factor of 1.01, a 1-degree turn) may round to no change at all.
    assert int((chosen & ~changed).sum()) <= 0.1 * n * p + 1


def test_document_transforms_are_drawn_after_the_first_block_so_existing_draws_stay_as_they_were():
    base = AugmentConfig(rotate=0.5, flip=0.3, affine=0.3, blur=0.1, noise=0.1, jpeg=0.1)
    every = AugmentConfig(**{**dataclasses.asdict(base), **{op: 0.3 for op in A.DOC_OPS}})
    a, b = A.draw(300, base, A.batch_generator(4, 1, 2)), A.draw(300, every, A.batch_generator(4, 1, 2))
    for op in A.BASE_OPS:
        assert torch.equal(a.applied(op), b.applied(op)), op
    for name in ("quarter_turns", "angle", "shift", "scale", "sigma", "noise_std", "quality"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.noise_seed == b.noise_seed
    # The first block is the layout seeds had before the document transforms: 15 uniforms, then the noise seed.
    g = A.batch_generator(4, 1, 2)
    u = torch.rand((300, 15), generator=g, dtype=torch.float64)
    assert torch.equal(a.applied("rotate"), u[:, 0] < 0.5) and a.noise_seed == int(torch.randint(0, 2**62, (1,), generator=g))
    # Samples no document transform chose come out as the base configuration makes them.
    x = noise_images(300, 24)
    none = ~torch.stack([b.applied(op) for op in A.DOC_OPS]).any(0)
    assert none.sum() > 0
    assert torch.equal(A.apply(x, a)[none], A.apply(x, b)[none])


def test_document_transforms_use_the_drawn_strengths_within_their_ranges():
    aug = AugmentConfig(**{**NONE, "rotate_any_max": 30.0, "brightness_max": 0.2, "contrast_max": 0.4,
                           "gamma_max": 1.0, "perspective_max": 0.5, "downscale_min": 0.6, "shadow_max": 0.7})
    d = A.draw(2000, aug, A.batch_generator(0, 0, 0)).doc
    for values, lo, hi in ((d.angle, -30, 30), (d.brightness, 0.8, 1.2), (d.contrast, 0.6, 1.4), (d.gamma, 0.5, 2.0),
                           (d.offsets, 0, 0.25), (d.downscale, 0.6, 1.0), (d.shadow, 0, 0.7), (d.shadow_angle, 0, 360)):
        assert lo <= values.min() and values.max() <= hi and values.max() - values.min() > 0.9 * (hi - lo)
    # gamma is log-uniform: as often darker as lighter
    assert within_3_sigma(int((d.gamma > 1).sum()), 2000, 0.5)
    x = noise_images(8, 24)
    d8 = A.draw(8, AugmentConfig(**{**NONE, "brightness": 1.0}), A.batch_generator(0, 0, 5))
    assert torch.equal(A.apply(x, d8), ops.brightness(x, d8.doc.brightness))


def test_the_per_sample_path_applies_the_document_transforms_with_the_same_ops():

    img = noise_images(1, 24)[0]
    aug = AugmentConfig(**{**NONE, "rotate_any": 1.0, "shadow": 1.0})
    out = augment(img, aug, torch.Generator().manual_seed(3))
    assert torch.equal(out, augment(img, aug, torch.Generator().manual_seed(3)))
    d = A.draw_document(1, aug, torch.Generator().manual_seed(3))
    assert torch.equal(out, ops.shadow(ops.rotate_any(img[None], d.angle), d.shadow, d.shadow_angle)[0])
    assert torch.equal(augment(img, AugmentConfig(**NONE), torch.Generator().manual_seed(3)), img)
