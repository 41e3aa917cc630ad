"""Multi-crop views (DINO): 2 global + N local random-resized crops with flips, colour jitter, grey, blur and
solarisation, as batched tensor ops that run wherever the images are: on the GPU when present, else the CPU.

Every crop is one affine sampling grid (`affine_grid` + `grid_sample`), so all crops of a batch are cut in one
call; the Gram teacher's higher-resolution views reuse the global crops' grids at a larger output size, so
they show exactly the same boxes. Random parameters come from a CPU generator seeded per step: the views are
identical on CPU and GPU runs and after a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CropSettings:
    global_size: int = 224
    local_size: int = 96
    local_crops: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high, generator=generator)


def random_boxes(n: int, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """[n, 2, 3] affine maps from crop to image coordinates: area share in `scale`, aspect ratio in [3/4, 4/3],
    a random position inside the image, a horizontal flip half of the time."""
    area = _uniform(n, *scale, generator)
    log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), generator)
    width = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    height = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    centre_x = (_uniform(n, 0, 1, generator) * 2 - 1) * (1 - width)
    centre_y = (_uniform(n, 0, 1, generator) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    return theta


def render(images: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """images uint8 [B, 3, S, S], theta [V * B, 2, 3] (view-major) -> float [V * B, 3, size, size] in [0, 1]."""
    views = theta.shape[0] // images.shape[0]
    source = images.float().div_(255).repeat(views, 1, 1, 1)
    grid = F.affine_grid(theta.to(images.device), [theta.shape[0], 3, size, size], align_corners=False)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="reflection", align_corners=False).clamp_(0, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def colour(x: torch.Tensor, generator: torch.Generator, *, blur: float, solarize: float) -> torch.Tensor:
    """DINO's photometric augmentations, each applied per image with its probability: brightness/contrast/
    saturation jitter (0.4, 0.4, 0.2; p=0.8), greyscale (p=0.2), Gaussian blur (p=blur), solarise (p=solarize)."""
    n, device = x.shape[0], x.device

    def per_image(values: torch.Tensor) -> torch.Tensor:
        return values.to(device).view(n, 1, 1, 1)

    jitter = per_image(torch.rand(n, generator=generator) < 0.8)
    brightness = per_image(_uniform(n, 0.6, 1.4, generator))
    contrast = per_image(_uniform(n, 0.6, 1.4, generator))
    saturation = per_image(_uniform(n, 0.8, 1.2, generator))
    grey = per_image(torch.rand(n, generator=generator) < 0.2)
    blurred = per_image(torch.rand(n, generator=generator) < blur)
    sigma = _uniform(n, 0.1, 2.0, generator) * x.shape[-1] / 224
    solarised = per_image(torch.rand(n, generator=generator) < solarize)

    adjusted = (x * brightness).clamp(0, 1)
    mean = _grey(adjusted).mean(dim=(1, 2, 3), keepdim=True)
    adjusted = ((adjusted - mean) * contrast + mean).clamp(0, 1)
    adjusted = ((adjusted - _grey(adjusted)) * saturation + _grey(adjusted)).clamp(0, 1)
    x = torch.where(jitter, adjusted, x)
    x = torch.where(grey, _grey(x), x)
    x = torch.where(blurred, gaussian_blur(x, sigma.to(device)), x)
    return torch.where(solarised & (x >= 0.5), 1 - x, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable blur with one sigma per image (a grouped convolution over image-channels)."""
    n, channels, height, width = x.shape
    radius = max(1, round(x.shape[-1] / 50))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # [n * C, k]
    flat = x.reshape(1, n * channels, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * channels)
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * channels)
    return flat.reshape(n, channels, height, width)


class MultiCrop:
    def __init__(self, settings: CropSettings):
        self.settings = settings

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.settings.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.settings.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, images: torch.Tensor, generator: torch.Generator, hires_size: int | None = None) -> dict:
        """images uint8 [B, 3, S, S] -> {"global": [2B, ...], "local": [N*B, ...], "global_hires": [2B, ...]?}.
        View-major: rows v*B .. (v+1)*B - 1 are view v of every image."""
        s, batch = self.settings, images.shape[0]
        theta = random_boxes(2 * batch, s.global_scale, generator)
        first, second = render(images, theta[:batch], s.global_size), render(images, theta[batch:], s.global_size)
        first = colour(first, generator, blur=1.0, solarize=0.0)
        second = colour(second, generator, blur=0.1, solarize=0.2)
        views = {"global": self.normalise(torch.cat([first, second]))}
        if s.local_crops:
            local = render(images, random_boxes(s.local_crops * batch, s.local_scale, generator), s.local_size)
            views["local"] = self.normalise(colour(local, generator, blur=0.5, solarize=0.0))
        if hires_size:  # the Gram teacher's view: same boxes, more pixels, no photometric change
            views["global_hires"] = self.normalise(render(images, theta, hires_size))
        return views
