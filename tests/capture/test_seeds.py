"""Unit tests of capture/seeds.py: what can be said about the seed, without Lightning."""

from __future__ import annotations

import pytest
import torch

from prov4ml_lightning.capture.seeds import SeedInfo, detect_seed


@pytest.fixture
def torch_seed(monkeypatch: pytest.MonkeyPatch):
    """Set torch's seed for one test: no PL_GLOBAL_SEED, the generator state restored afterwards."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    state = torch.get_rng_state()
    yield torch.manual_seed
    torch.set_rng_state(state)


def test_a_seed_below_2_to_the_32_is_taken_as_set_by_hand(torch_seed):
    torch_seed(2**32 - 1)
    assert detect_seed() == SeedInfo(2**32 - 1, "torch.manual_seed", 2**32 - 1)


def test_a_large_seed_is_not_taken_as_set_by_hand_but_recorded(torch_seed):
    torch_seed(2**32)
    info = detect_seed()
    assert info == SeedInfo(None, None, 2**32)
    assert info.attributes() == {"torch_initial_seed": 2**32}


def test_lightning_s_variable_wins_over_torch(torch_seed, monkeypatch: pytest.MonkeyPatch):
    torch_seed(7)
    monkeypatch.setenv("PL_GLOBAL_SEED", "1234")
    info = detect_seed()
    assert info == SeedInfo(1234, "lightning.seed_everything", 7)
    assert info.attributes() == {"seed": 1234, "seed_source": "lightning.seed_everything", "torch_initial_seed": 7}


def test_a_malformed_lightning_variable_falls_back_to_torch(torch_seed, monkeypatch: pytest.MonkeyPatch):
    torch_seed(5)
    monkeypatch.setenv("PL_GLOBAL_SEED", "not-a-number")
    assert detect_seed() == SeedInfo(5, "torch.manual_seed", 5)


def test_attributes_leave_absent_values_out():
    assert SeedInfo(None, None, None).attributes() == {}
    assert SeedInfo(3, None, None).attributes() == {"seed": 3, "seed_source": "unknown"}
