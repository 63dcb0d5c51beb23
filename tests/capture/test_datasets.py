"""Dataset fingerprints for every common item type (capture/datasets.py), and that reading the
sample leaves every global random generator where it was."""

from __future__ import annotations

import dataclasses
import random
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from prov4ml_lightning import Prov4MLWarning
from prov4ml_lightning.capture.datasets import describe_dataloader, fingerprint


class Items(Dataset):
    def __init__(self, make):
        self.make = make

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return self.make(i)


@dataclasses.dataclass
class Sample:
    x: torch.Tensor
    label: int


class Blob:
    def __init__(self, i):
        self.i = i

    def __prov4ml_bytes__(self):
        return self.i.to_bytes(4, "little")


MAKERS = {
    "0-d int64 label (TensorDataset)": lambda i: (torch.ones(3) * i, torch.tensor(i % 10)),
    "0-d float tensor": lambda i: torch.tensor(float(i)),
    "bool tensor": lambda i: torch.tensor([i % 2 == 0, True]),
    "bfloat16 tensor": lambda i: torch.full((2, 2), float(i), dtype=torch.bfloat16),
    "complex tensor": lambda i: torch.tensor([1 + 1j * i]),
    "uint8 image tensor rank 3": lambda i: torch.full((3, 4, 4), i, dtype=torch.uint8),
    "sparse tensor": lambda i: torch.eye(3).mul(i).to_sparse(),
    "python int": lambda i: i,
    "python float": lambda i: i / 3,
    "numpy array": lambda i: np.arange(4, dtype=np.float32) * i,
    "numpy scalar": lambda i: np.int64(i),
    "PIL image": lambda i: Image.new("L", (4, 4), color=i),
    "string": lambda i: f"sentence {i}",
    "bytes": lambda i: bytes([i, i]),
    "dict of mixed": lambda i: {"input_ids": torch.arange(3) + i, "text": str(i), "label": i % 2},
    "list of tensors": lambda i: [torch.tensor(i), torch.zeros(2)],
    "dataclass": lambda i: Sample(torch.tensor([i]), i % 3),
    "object with hook": lambda i: Blob(i),
}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_every_common_item_type_gets_a_content_fingerprint(kind):
    make = MAKERS[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Prov4MLWarning)
        fp = fingerprint(Items(make))
    assert fp.status == "complete" and fp.digest is not None and len(fp.digest) == 64
    assert fingerprint(Items(make)).digest == fp.digest  # stable
    changed = fingerprint(Items(lambda i: make(i + 1)))
    assert changed.digest != fp.digest  # content, not type, is hashed


def test_tensordataset_with_class_labels_is_fingerprinted_in_a_dataloader():
    ds = TensorDataset(torch.randn(64, 3), torch.randint(0, 10, (64,)))
    info = describe_dataloader(DataLoader(ds, batch_size=8), "train", 0)
    assert info.attributes["fingerprint_status"] == "complete"
    assert len(info.attributes["fingerprint"]) == 64
    assert not any("note" in k or "error" in k for k in info.attributes)


def test_unhashable_items_warn_naming_the_dataset_and_record_a_typed_unknown():
    loader = DataLoader(Items(lambda i: object()), batch_size=4)
    with pytest.warns(Prov4MLWarning, match=r"val dataset 0 \(.*Items\) has no content fingerprint.*builtins.object"):
        info = describe_dataloader(loader, "val", 0)
    assert "fingerprint" not in info.attributes
    assert info.attributes["fingerprint_status"] == "unknown"
    assert info.attributes["fingerprint_unhashable"] == "builtins.object"


def test_a_failing_item_gives_the_error_class_not_its_message():
    def boom(i):
        raise KeyError("secret detail")

    with pytest.warns(Prov4MLWarning, match="raised KeyError"):
        info = describe_dataloader(DataLoader(Items(boom)), "test", 1)
    assert info.attributes["fingerprint_status"] == "unknown"
    assert info.attributes["fingerprint_error"] == "KeyError"
    assert "secret" not in repr(info.attributes)


def test_dataset_hook_and_iterable_datasets():
    class Hooked(Items):
        def prov4ml_fingerprint(self):
            return "sha256:abc"

    assert fingerprint(Hooked(lambda i: object())).attributes()["fingerprint"] == "sha256:abc"

    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(3)

    fp = fingerprint(Stream())
    assert fp.status == "not_sampled" and fp.digest is None


def test_sampling_leaves_the_global_generators_untouched():
    class RandomTransform(Items):
        def __getitem__(self, i):
            return torch.rand(2) + random.random() + np.random.rand()

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state().clone())
    a = fingerprint(RandomTransform(None))
    after = (random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state().clone())
    assert before[0] == after[0]
    assert np.array_equal(before[1], after[1])
    assert torch.equal(before[2], after[2])
    assert fingerprint(RandomTransform(None)).digest == a.digest  # random transforms: same fingerprint


def test_sampling_leaves_a_datasets_own_generators_untouched():
    class Noisy(Items):
        def __init__(self):
            super().__init__(None)
            self.g = torch.Generator().manual_seed(123)
            self.rng = np.random.default_rng(7)
            self.py = random.Random(3)

        def __getitem__(self, i):
            return torch.rand(2, generator=self.g) + self.rng.random() + self.py.random()

    ds = Noisy()
    wrapped = torch.utils.data.Subset(ds, range(10))
    before = (ds.g.get_state().clone(), ds.rng.bit_generator.state, ds.py.getstate())
    fingerprint(wrapped)
    assert torch.equal(ds.g.get_state(), before[0])
    assert ds.rng.bit_generator.state == before[1] and ds.py.getstate() == before[2]
