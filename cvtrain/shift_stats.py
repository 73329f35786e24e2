"""Label-free image statistics that show a distribution shift (``cvsweep shift``).

Per image, on its decoded cache row (stretched to a square, so no padding enters a figure):

- brightness: mean grey level (0-255); contrast: its standard deviation;
- sharpness: variance of the 3x3 Laplacian of the grey image;
- noise: Immerkaer's estimate per colour channel (mean absolute response of a
  Laplacian-difference kernel that cancels smooth structure, times sqrt(pi/2)/6);
- aspect ratio: width / height of the original file (read from its header);
- orientation: the dominant gradient orientation modulo 90 degrees. Text lines, table rules
  and a page's edges put most gradient energy at 0/90 degrees; a page turned by an arbitrary
  angle moves it away. With phi the gradient angle and w its squared magnitude, the skew is
  ``theta = atan2(sum w sin 4phi, sum w cos 4phi) / 4`` in (-45, 45]. Gradients are first
  un-stretched with the original size, so a 3:4 page squeezed into the square keeps its angles.
  Quarter turns: text lines are wide, so an upright page has more energy across its lines
  (vertical gradients) than along them; when, after removing theta, horizontal gradients
  dominate by ``QUARTER_RATIO``, the page lies on its side. A page upside down is not
  detectable this way (it counts as upright).
  An image is "not upright" when ``|theta| > SKEW_DEG`` or it lies on its side; images whose
  gradients have no dominant orientation (coherence below ``MIN_COHERENCE``: photos of
  dashboards) count as upright.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SKEW_DEG = 8.0          # the demo's (and a phone photo's) page skew stays within a few degrees
QUARTER_RATIO = 1.3
MIN_COHERENCE = 0.08
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
_IMMERKAER = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) float grey levels of a uint8 (N, 3, H, W) batch."""
    xf = x.float()
    return (0.2989 * xf[:, 0:1] + 0.587 * xf[:, 1:2] + 0.114 * xf[:, 2:3])


def _conv(g: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return F.conv2d(g, k.to(g.device).view(1, 1, 3, 3))


def image_stats(x: torch.Tensor, sizes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-image statistics of a uint8 batch; ``sizes`` (N, 2) original (width, height), None: square."""
    g = gray(x)
    n = g.shape[0]
    flat = g.view(n, -1)
    lap = _conv(g, _LAPLACE).view(n, -1)
    # per colour channel, so it reads in the noise op's units (the grey mix would shrink it by 1/3)
    noise = _conv(x.float().flatten(0, 1).unsqueeze(1), _IMMERKAER).abs().view(n, -1).mean(1) * math.sqrt(math.pi / 2) / 6
    skew, side, coherence = orientation(g, sizes)
    not_upright = (coherence >= MIN_COHERENCE) & ((np.abs(skew) > SKEW_DEG) | side)
    return {
        "brightness": flat.mean(1).cpu().numpy(),
        "contrast": flat.std(1).cpu().numpy(),
        "laplacian_var": lap.var(1).cpu().numpy(),
        "noise": noise.cpu().numpy(),
        "skew_deg": skew,
        "coherence": coherence,
        "not_upright": not_upright,
    }


def orientation(g: torch.Tensor, sizes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(skew in degrees within (-45, 45], lies on its side, coherence) per grey image."""
    n, _, h, w = g.shape
    gx = _conv(g, _SOBEL_X).view(n, -1)
    gy = _conv(g, _SOBEL_X.t()).view(n, -1)
    if sizes is not None:
        # undo the stretch to the square: d/dx_orig = d/dx_cache * W_cache / W_orig
        s = torch.as_tensor(np.asarray(sizes, dtype=np.float32), device=g.device)
        gx = gx * (w / s[:, 0:1])
        gy = gy * (h / s[:, 1:2])
    wgt = gx * gx + gy * gy
    phi = torch.atan2(gy, gx)
    c4, s4 = (wgt * torch.cos(4 * phi)).sum(1), (wgt * torch.sin(4 * phi)).sum(1)
    total = wgt.sum(1).clamp(min=1e-9)
    theta = torch.atan2(s4, c4) / 4
    coherence = torch.sqrt(c4 * c4 + s4 * s4) / total
    rel = phi - theta.view(-1, 1)
    across = (wgt * torch.sin(rel) ** 2).sum(1)   # vertical gradients in the page's frame: text lines
    along = (wgt * torch.cos(rel) ** 2).sum(1)
    side = along > QUARTER_RATIO * across
    return (torch.rad2deg(theta).cpu().numpy(), side.cpu().numpy(), coherence.cpu().numpy())


def summarize(stats: dict[str, np.ndarray], aspect: np.ndarray) -> dict[str, float]:
    """The figures one side of the comparison reports."""
    def f(v) -> float:
        return round(float(v), 4)

    return {
        "n_images": int(len(stats["brightness"])),
        "brightness_mean": f(np.mean(stats["brightness"])),
        "contrast_mean": f(np.mean(stats["contrast"])),
        "laplacian_var_median": f(np.median(stats["laplacian_var"])),
        "noise_median": f(np.median(stats["noise"])),
        "aspect_ratio_median": f(np.median(aspect)) if len(aspect) else float("nan"),
        "not_upright_share": f(np.mean(stats["not_upright"])),
    }
