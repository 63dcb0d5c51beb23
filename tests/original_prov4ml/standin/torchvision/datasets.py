"""``MNIST`` with synthetic digits: the same shapes, types and labels, no download."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

__all__ = ["MNIST"]

# 5x3 strokes of the digits 0-9, scaled up into a 28x28 image
_GLYPHS = [
    "111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
    "111100111001111", "111100111101111", "111001001001001", "111101111101111", "111101111001111",
]


class MNIST(torch.utils.data.Dataset):
    """Synthetic MNIST: item ``i`` is a PIL ``L`` image of digit ``i % 10`` with pixel noise fixed by
    ``i`` and the split, and its label. ``download`` is accepted and does nothing (nothing is read
    or written under ``root``)."""

    def __init__(self, root: str, train: bool = True, transform: Callable | None = None,
                 target_transform: Callable | None = None, download: bool = False) -> None:
        self.root = root
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        self._length = 60_000 if train else 10_000

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if not 0 <= index < self._length:
            raise IndexError(index)
        label = index % 10
        gen = torch.Generator().manual_seed(index * 2 + int(self.train))  # not the global generator
        glyph = torch.tensor([int(c) for c in _GLYPHS[label]], dtype=torch.float32).view(5, 3)
        big = glyph.repeat_interleave(4, 0).repeat_interleave(4, 1)  # 20x12
        canvas = torch.zeros(28, 28)
        canvas[4:24, 8:20] = big * 200
        canvas += torch.rand(28, 28, generator=gen) * 55
        img = Image.fromarray(canvas.clamp(0, 255).to(torch.uint8).numpy(), mode="L")
        if self.transform is not None:
            img = self.transform(img)
        target: Any = label
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target
