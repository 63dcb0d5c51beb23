"""Unit tests of capture/model_info.py: parameter counts and bytes by dtype."""

from __future__ import annotations

import torch
from torch import nn

from prov4ml_lightning.capture.model_info import model_statistics


def test_counts_and_bytes_by_dtype():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))  # 8 + 4 parameters; 2 + 2 + 1 buffer values
    model[0].bias.requires_grad_(False)
    stats = model_statistics(model)
    assert stats["total_params"] == 12 and stats["trainable_params"] == 10
    assert stats["param_bytes"] == stats["param_bytes_float32"] == 12 * 4
    # running_mean and running_var (float32), num_batches_tracked (int64)
    assert stats["buffer_bytes_float32"] == 4 * 4 and stats["buffer_bytes_int64"] == 8
    assert stats["buffer_bytes"] == 24 and stats["memory_bytes"] == 48 + 24
    assert stats["model_class"] == "torch.nn.modules.container.Sequential"


def test_mixed_dtypes_are_counted_apart():
    model = nn.Linear(4, 4).to(torch.float16)
    model.register_buffer("scale", torch.ones(3, dtype=torch.float64))
    stats = model_statistics(model)
    assert stats["total_params"] == 20 and stats["param_bytes_float16"] == 40
    assert "param_bytes_float32" not in stats
    assert stats["buffer_bytes_float64"] == 24 and stats["memory_bytes"] == 64


def test_a_module_without_parameters():
    stats = model_statistics(nn.ReLU())
    assert (stats["total_params"], stats["trainable_params"], stats["memory_bytes"]) == (0, 0, 0)
    assert stats["model_class"] == "torch.nn.modules.activation.ReLU"
