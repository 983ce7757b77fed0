"""Batched augmentation on the training device, and the one normalisation every model input gets.

Small faces live in memory as uint8 tensors and are augmented a whole batch at a
time with torch ops: per-image PIL transforms in DataLoader workers would cost
more than the model step on 2 CPU cores. `g` is a generator on the images'
device: random values are drawn where they are used, so a GPU never waits on
host-to-device copies of them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

def _rand(g: torch.Generator, n: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device) * (high - low) + low


def random_geometry(x: torch.Tensor, g: torch.Generator, flip: bool = False, rotate: float = 0.0,
                    crop: float = 0.0) -> torch.Tensor:
    """Horizontal flip, rotation (+-`rotate` degrees, with +-5% shift and scale) and random resized
    crop (area fraction in [crop, 1], aspect 3/4..4/3), resampled once per batch."""
    n = x.shape[0]
    if rotate <= 0 and crop <= 0:
        if not flip:
            return x
        flipped = _rand(g, n) < 0.5
        return torch.where(flipped[:, None, None, None], x.flip(-1), x)  # exact, no resampling
    sx = torch.ones(n, device=x.device)
    sy, tx, ty, angle = sx.clone(), sx * 0, sx * 0, sx * 0
    if crop > 0:
        area = _rand(g, n, crop, 1.0)
        ratio = torch.exp(_rand(g, n, math.log(3 / 4), math.log(4 / 3)))
        sx, sy = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
        tx, ty = _rand(g, n, -1, 1) * (1 - sx), _rand(g, n, -1, 1) * (1 - sy)
    if rotate > 0:
        angle = _rand(g, n, -rotate, rotate) * (math.pi / 180)
        scale = _rand(g, n, 0.95, 1.05)
        sx, sy = sx * scale, sy * scale
        tx, ty = tx + _rand(g, n, -0.05, 0.05), ty + _rand(g, n, -0.05, 0.05)
    if flip:
        sx = torch.where(_rand(g, n) < 0.5, -sx, sx)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, tx], 1), torch.stack([sin * sx, cos * sy, ty], 1)], 1)
    # = F.affine_grid(theta, x.shape, align_corners=False), built by broadcasting: 3-10x faster on the CPU.
    h, w = x.shape[-2:]
    u = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1  # pixel centres in [-1, 1]
    v = (torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1
    t = theta[:, :, :, None, None]
    grid = (t[:, :, 0] * u + t[:, :, 1] * v[:, None] + t[:, :, 2]).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def jitter(x: torch.Tensor, g: torch.Generator, strength: float) -> torch.Tensor:
    """Brightness and contrast each scaled by a factor in [1 - strength, 1 + strength]."""
    n = x.shape[0]
    brightness = _rand(g, n, 1 - strength, 1 + strength)[:, None, None, None]
    contrast = _rand(g, n, 1 - strength, 1 + strength)[:, None, None, None]
    mean = x.mean((1, 2, 3), keepdim=True)
    return (((x - mean) * contrast + mean) * brightness).clamp_(0, 1)


def blur(x: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    """Gaussian blur of a random `p` share of the images, sigma 0.1..1 px per 48 px of image side."""
    # Only the chosen images are computed: cheaper on the CPU (on a GPU, nonzero() costs one sync).
    chosen = (_rand(g, x.shape[0]) < p).nonzero().flatten()
    n, c, h, w = len(chosen), *x.shape[1:]
    if n == 0:
        return x
    sigma_max = max(h, w) / 48
    sigma = _rand(g, n, 0.1, sigma_max)
    radius = math.ceil(2 * sigma_max)
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, taps)
    # One grouped convolution blurs each chosen image with its own kernel (separable: rows, then columns).
    y = F.pad(x[chosen].reshape(1, n * c, h, w), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=n * c)
    y = F.conv2d(y, kernel[:, None, :, None], groups=n * c)
    x = x.clone()
    x[chosen] = y.reshape(n, c, h, w)
    return x


def erase(x: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    """Random erasing: with probability `p`, a rectangle (2-20% of the area, aspect 0.3-3.3) gets a random gray."""
    chosen = (_rand(g, x.shape[0]) < p).nonzero().flatten()
    n, (h, w) = len(chosen), x.shape[2:]
    if n == 0:
        return x
    area = _rand(g, n, 0.02, 0.2)
    ratio = torch.exp(_rand(g, n, math.log(0.3), math.log(3.3)))
    eh = (area * ratio).sqrt().mul(h).round().clamp(1, h)[:, None]
    ew = (area / ratio).sqrt().mul(w).round().clamp(1, w)[:, None]
    top = (_rand(g, n)[:, None] * (h - eh + 1)).floor()
    left = (_rand(g, n)[:, None] * (w - ew + 1)).floor()
    fill = _rand(g, n)[:, None, None, None]
    rows, cols = torch.arange(h, device=x.device)[None], torch.arange(w, device=x.device)[None]
    inside = ((rows >= top) & (rows < top + eh))[:, :, None] & ((cols >= left) & (cols < left + ew))[:, None, :]
    x = x.clone()
    x[chosen] = torch.where(inside[:, None], fill, x[chosen])
    return x


def prepare_batch(x: torch.Tensor, params: dict | None = None, g: torch.Generator | None = None,
                  memory_format=torch.channels_last) -> torch.Tensor:
    """uint8 batch -> augmented (when `g` is given) float batch normalised to [-1, 1] (mean = std = 0.5)."""
    x = x.float().div_(255)
    if g is not None:
        x = random_geometry(x, g, params["aug_flip"], params["aug_rotate"], params["aug_crop"])
        if params["aug_jitter"] > 0:
            x = jitter(x, g, params["aug_jitter"])
        if params["aug_blur"] > 0:
            x = blur(x, g, params["aug_blur"])
        if params["aug_erasing"] > 0:
            x = erase(x, g, params["aug_erasing"])
    return x.sub_(0.5).div_(0.5).contiguous(memory_format=memory_format)
