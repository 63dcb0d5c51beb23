"""The hashes partial loads are found by (``capture/model_info``): a state dict's hash is over its
tensors' own hashes, and the groups of a module's tensors hash by content, whatever prefix the
module has in the state dict. Real modules, real ``load_state_dict``."""

from __future__ import annotations

import torch
from torch import nn

from prov4ml_lightning.capture.model_info import (
    MAX_GROUPS,
    file_state_dict_sha256,
    state_dict_sha256,
    tensor_groups,
    weight_groups,
)


def _backbone() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.LayerNorm(8))


class Net(nn.Module):
    def __init__(self, classes: int = 1) -> None:
        super().__init__()
        self.backbone = _backbone()
        self.head = nn.Linear(8, classes)


class Wrapped(nn.Module):
    """As a LightningModule holding its network: every key starts with ``model.``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Net()


def _groups(module: nn.Module) -> tuple[dict[str, tuple[str, int]], int]:
    grouped = weight_groups(state_dict_sha256(module.state_dict()))
    assert grouped is not None
    return grouped


def test_a_backbone_under_another_prefix_has_the_same_group_hash():
    torch.manual_seed(1)
    a = Wrapped()
    b = Net(classes=3)  # a new head
    b.backbone.load_state_dict(a.model.backbone.state_dict())
    a_groups, a_total = _groups(a)
    b_groups, b_total = _groups(b)
    assert (a_total, b_total) == (8, 8)  # 3 layers' weight and bias, and the new head's
    assert b_groups["backbone"] == a_groups["model.backbone"]
    assert b_groups["backbone"][1] == 6
    # the modules inside it too (model.backbone.0 is at the depth limit on A's side)
    assert b_groups["backbone.0"] == a_groups["model.backbone.0"]
    # the heads differ, and so do the wholes
    assert b_groups["head"][0] != a_groups["model.head"][0]
    assert b_groups[""][0] != a_groups[""][0]
    assert state_dict_sha256(b.state_dict()) != state_dict_sha256(a.state_dict())


def test_fresh_modules_share_no_group():
    torch.manual_seed(1)
    a = Wrapped()
    torch.manual_seed(2)
    c = Net()
    a_hashes = {h for h, _ in _groups(a)[0].values()}
    c_groups = _groups(c)[0]
    assert a_hashes.isdisjoint(h for h, _ in c_groups.values())
    # a LayerNorm just made holds ones and zeros, as in any fresh model: no group of its own
    assert "backbone.3" not in c_groups
    assert "backbone" in c_groups and "head" in c_groups


def test_the_whole_hash_is_the_weights_not_the_holder(tmp_path):
    torch.manual_seed(3)
    net = Net()
    digest = state_dict_sha256(net.state_dict())
    torch.save(net.state_dict(), tmp_path / "w.pt")
    torch.save({"state_dict": net.state_dict(), "epoch": 1}, tmp_path / "w.ckpt")
    assert file_state_dict_sha256(tmp_path / "w.pt") == digest == file_state_dict_sha256(tmp_path / "w.ckpt")
    other = Net()
    other.load_state_dict(net.state_dict())
    assert state_dict_sha256(other.state_dict()) == digest
    with torch.no_grad():
        other.head.bias += 1
    assert state_dict_sha256(other.state_dict()) != digest
    # renamed keys: another whole hash (names are part of it), the same content as a group
    renamed = {f"model.{k}": v for k, v in net.state_dict().items()}
    assert state_dict_sha256(renamed) != digest
    renamed_groups = weight_groups(state_dict_sha256(renamed))[0]
    assert "model" not in renamed_groups  # the same tensors as the whole: one group, the whole's
    assert renamed_groups[""] == weight_groups(digest)[0][""]
    assert renamed_groups["model.backbone"] == weight_groups(digest)[0]["backbone"]


def test_groups_are_bounded_shallowest_first():
    tensors = {f"layers.{i}.block.{j}.weight": (f"{i:04d}{j:04d}" + "0" * 56, False)
               for i in range(30) for j in range(3)}
    groups = tensor_groups(tensors)
    assert len(groups) == MAX_GROUPS
    # "layers" holds the same tensors as the whole, "layers.<i>.block" as "layers.<i>": one group each
    assert "" in groups and "layers" not in groups
    assert set(groups) - {""} <= {f"layers.{i}" for i in range(30)}
    assert all(n == 3 for p, (_, n) in groups.items() if p)
