"""The transforms the original examples use, on PIL images, random choices from torch's generator."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

__all__ = ["Compose", "RandomHorizontalFlip", "RandomRotation", "RandomVerticalFlip", "ToTensor"]


class Compose:
    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Any) -> Any:
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        body = "".join(f"\n    {t}" for t in self.transforms)
        return f"{type(self).__name__}({body}\n)"


class RandomRotation:
    def __init__(self, degrees: float | Sequence[float]) -> None:
        self.degrees = [-float(degrees), float(degrees)] if isinstance(degrees, (int, float)) else \
            [float(d) for d in degrees]

    def __call__(self, img: Image.Image) -> Image.Image:
        angle = float(torch.empty(1).uniform_(self.degrees[0], self.degrees[1]).item())
        return img.rotate(angle, resample=Image.NEAREST, expand=False, fillcolor=0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(degrees={self.degrees}, interpolation=nearest, expand=False, fill=0)"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.transpose(Image.FLIP_LEFT_RIGHT) if torch.rand(1) < self.p else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class RandomVerticalFlip(RandomHorizontalFlip):
    def __call__(self, img: Image.Image) -> Image.Image:
        return img.transpose(Image.FLIP_TOP_BOTTOM) if torch.rand(1) < self.p else img


class ToTensor:
    def __call__(self, img: Image.Image) -> torch.Tensor:
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return data.view(img.size[1], img.size[0], len(img.getbands())).permute(2, 0, 1).float().div(255)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
