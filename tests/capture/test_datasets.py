"""Dataset fingerprints (capture/fingerprint.py, hashing.py, canonical.py, file_hashes.py) and the dataset
entities of a run (capture/datasets.py, dataset_records.py): complete content hashes per kind of dataset,
equal values equal whatever their number type, files through the cache, the background thread, the run's
end waiting for it, recovery."""

from __future__ import annotations

import dataclasses
import os
import random
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Subset, TensorDataset

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Prov4MLWarning
from prov4ml_lightning.capture import file_hashes
from prov4ml_lightning.capture.datasets import declare_loader, describe_dataloader
from prov4ml_lightning.capture.fingerprint import SAMPLE_SIZE, fingerprint, plan
from prov4ml_lightning.recovery.recover import recover
from prov4ml_lightning.tracking.journal import journal_path, read_journal
from tests.helpers import attr, by_type, read_prov, records_of, wait_until


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file-hash cache of these tests lives in their temporary folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(file_hashes.CACHE_ENV, str(folder))
    return folder


class Items(Dataset):
    def __init__(self, make, n: int = 16):
        self.make = make
        self.n = n

    def __len__(self):
        return self.n

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
def test_every_common_item_type_gets_a_content_fingerprint_of_every_item(kind):
    make = MAKERS[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Prov4MLWarning)
        fp = fingerprint(Items(make))
    assert (fp.status, fp.method) == ("complete", "items") and fp.digest is not None and len(fp.digest) == 64
    assert fingerprint(Items(make)).digest == fp.digest  # stable
    last_changed = fingerprint(Items(lambda i: make(i + 1) if i == 15 else make(i)))
    assert last_changed.digest != fp.digest  # every item counts, the last one too


# -- the issue: complete, and canonical across number types ----------------------------------------
def test_labels_differing_only_at_odd_indices_change_the_fingerprint():
    x = torch.randn(1000, 3)
    y = torch.arange(1000) % 10
    odd = y.clone()
    odd[1::2] = (odd[1::2] + 1) % 10
    assert fingerprint(TensorDataset(x, y)).digest != fingerprint(TensorDataset(x, odd)).digest
    assert fingerprint(Items(lambda i: (x[i], int(y[i])), 1000)).digest != \
        fingerprint(Items(lambda i: (x[i], int(odd[i])), 1000)).digest
    for fp in (fingerprint(TensorDataset(x, y)), fingerprint(Items(lambda i: (x[i], int(y[i])), 1000))):
        assert fp.status == "complete"


class Vision(Dataset):
    """torchvision-style: ``.data`` and ``.targets``, items read from them."""

    def __init__(self, data, targets):
        self.data, self.targets = data, targets
        self.root = "/no/such/folder"

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.data[i], self.targets[i]


def test_equal_labels_as_python_int_numpy_int64_or_tensor_give_one_fingerprint():
    images = np.random.default_rng(0).integers(0, 255, (50, 4, 4), dtype=np.uint8)
    labels = [i % 7 for i in range(50)]
    as_ints = fingerprint(Vision(images, labels))
    assert as_ints.method == "buffers" and as_ints.status == "complete"
    assert fingerprint(Vision(images, np.array(labels, dtype=np.int64))).digest == as_ints.digest
    assert fingerprint(Vision(torch.from_numpy(images), torch.tensor(labels))).digest == as_ints.digest
    assert fingerprint(Vision(images, [label + 1 for label in labels])).digest != as_ints.digest
    # items: a Python int and a NumPy int64 label are the same value
    assert fingerprint(Items(lambda i: (images[i], labels[i]), 50)).digest == \
        fingerprint(Items(lambda i: (images[i], np.int64(labels[i])), 50)).digest
    # a list of Python ints is the NumPy array of the same values
    assert fingerprint(list(range(10))).digest == fingerprint(np.arange(10, dtype=np.int64)).digest
    # floats are hashed by dtype: float32 data and its float64 copy are different data
    assert fingerprint(np.ones(4, np.float32)).digest != fingerprint(np.ones(4, np.float64)).digest


def test_subset_and_concat_are_hashed_whole_with_their_indices():
    base = TensorDataset(torch.arange(20).float().reshape(10, 2), torch.arange(10))
    assert plan(Subset(base, [1, 2])).where == "background"
    assert fingerprint(Subset(base, [1, 2])).digest != fingerprint(Subset(base, [1, 3])).digest
    both = fingerprint(ConcatDataset([base, base]))
    assert both.method == "buffers" and both.digest != fingerprint(base).digest


class Noisy(Items):
    """Items that draw from the dataset's own generators."""

    def __init__(self):
        super().__init__(None)
        self.g = torch.Generator().manual_seed(123)
        self.rng = np.random.default_rng(7)
        self.py = random.Random(3)

    def __getitem__(self, i):
        return torch.rand(2, generator=self.g) + self.rng.random() + self.py.random()


def test_a_dataset_with_its_own_generators_has_the_same_fingerprint_after_training_read_it():
    ds = Noisy()
    before = fingerprint(ds)
    for _ in range(3):  # an epoch or three of training advance its generators
        for i in range(len(ds)):
            ds[i]
    assert fingerprint(ds).digest == before.digest and before.status == "complete"


def test_reading_items_leaves_global_and_own_generators_where_they_were():
    class RandomTransform(Items):
        def __getitem__(self, i):
            return torch.rand(2) + random.random() + np.random.rand()

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state().clone())
    a = fingerprint(RandomTransform(None))
    after = (random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state().clone())
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and torch.equal(before[2], after[2])
    assert fingerprint(RandomTransform(None)).digest == a.digest  # random transforms: same fingerprint

    ds = Noisy()
    wrapped = Subset(ds, range(10))
    own = (ds.g.get_state().clone(), ds.rng.bit_generator.state, ds.py.getstate())
    fingerprint(wrapped)
    assert torch.equal(ds.g.get_state(), own[0])
    assert ds.rng.bit_generator.state == own[1] and ds.py.getstate() == own[2]


# -- other kinds ------------------------------------------------------------------------------
def test_items_over_the_budget_are_a_fixed_sample_with_its_size():
    ds = Items(lambda i: (i, i % 3), 10_000)
    fp = fingerprint(ds, budget=0.0)
    assert (fp.status, fp.method, fp.sample_size) == ("sample", "items-sample", SAMPLE_SIZE)
    assert fp.attributes()["fingerprint_sample_size"] == SAMPLE_SIZE
    assert fingerprint(ds, budget=0.0).digest == fp.digest  # the same sample every time
    assert fingerprint(Items(lambda i: (i, i % 3) if i else (1, 1), 10_000), budget=0.0).digest != fp.digest
    assert fingerprint(ds).status == "complete"  # within the default budget: every item


def test_a_hugging_face_dataset_is_identified_by_its_own_fingerprint():
    class HFLike:  # the duck type: datasets.Dataset's _fingerprint
        _fingerprint = "0a1b2c3d4e5f6789"

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"text": "x"}

    p = plan(HFLike())
    assert p.where == "ready"
    fp = p.run()
    assert (fp.digest, fp.status, fp.method) == ("0a1b2c3d4e5f6789", "complete", "huggingface")


def test_iterable_datasets_are_referenced_by_their_source_not_read():
    class Shards(IterableDataset):
        def __init__(self, files):
            self.files = files

        def __iter__(self):
            raise AssertionError("a stream is not consumed for its fingerprint")

    a = fingerprint(Shards(["s3://bucket/a.tar", "s3://bucket/b.tar"]))
    assert (a.status, a.method) == ("reference", "reference") and len(a.digest) == 64
    assert fingerprint(Shards(["s3://bucket/a.tar", "s3://bucket/b.tar"])).digest == a.digest
    assert fingerprint(Shards(["s3://bucket/a.tar", "s3://bucket/c.tar"])).digest != a.digest

    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(3)

    unknown = fingerprint(Stream())  # nothing says where it reads from (its repr holds an address)
    assert unknown.status == "unknown" and unknown.digest is None


def test_hooks_and_failures():
    class Hooked(Items):
        def prov4ml_fingerprint(self):
            return "sha256:abc"

    assert fingerprint(Hooked(lambda i: object())).attributes()["fingerprint"] == "sha256:abc"
    opaque = fingerprint(Items(lambda i: object()))
    assert opaque.status == "unknown" and opaque.unhashable == ("builtins.object",) and opaque.digest is None

    def boom(i):
        raise KeyError("secret detail")

    failed = fingerprint(Items(boom))
    assert failed.status == "unknown" and failed.error == "KeyError" and "secret" not in repr(failed)


def test_describe_dataloader_records_the_loader_settings():
    ds = TensorDataset(torch.randn(64, 3), torch.randint(0, 10, (64,)))
    info = describe_dataloader(DataLoader(ds, batch_size=8, shuffle=True, drop_last=True), "train", 0)
    assert info.dataset is ds
    assert {k: info.attributes[k] for k in ("role", "length", "batch_size", "shuffle", "drop_last", "num_workers")} \
        == {"role": "train", "length": 64, "batch_size": 8, "shuffle": True, "drop_last": True, "num_workers": 0}


# -- files ------------------------------------------------------------------------------------
class Folder(Dataset):
    """ImageFolder-like: ``root`` and ``samples`` of ``(path, class index)``."""

    def __init__(self, root: Path):
        self.root = str(root)
        self.samples = [(str(p), i % 2) for i, p in enumerate(sorted(root.glob("*.png")))]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return Image.open(self.samples[i][0]), self.samples[i][1]


def _images(root: Path, n: int = 12) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        Image.new("L", (8, 8), color=i * 10).save(root / f"img{i:03d}.png")
    return root


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose content was read (not found in the cache)."""
    seen: list[str] = []
    real = file_hashes.read_file_digest

    def counting(path: str) -> bytes:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(file_hashes, "read_file_digest", counting)
    return seen


def test_file_backed_datasets_are_hashed_by_content_through_the_cache(tmp_path, reads, cache_in_tmp):
    root = _images(tmp_path / "images")
    first = fingerprint(Folder(root))
    assert (first.status, first.method, first.files, first.files_read) == ("complete", "files", 12, 12)
    assert len(reads) == 12 and (cache_in_tmp / "file-hashes.sqlite3").exists()

    reads.clear()
    second = fingerprint(Folder(root))
    assert second.digest == first.digest and reads == [] and second.files_read == 0  # the second run reads nothing

    path = root / "img003.png"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same content
    reads.clear()
    assert fingerprint(Folder(root)).digest == first.digest and reads == [str(path)]

    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # same size, other content, a later mtime
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    changed = fingerprint(Folder(root))
    assert changed.digest != first.digest

    relabelled = Folder(root)
    relabelled.samples = [(p, 1 - t) for p, t in relabelled.samples]
    assert fingerprint(relabelled).digest != changed.digest


def test_a_moved_folder_keeps_its_fingerprint(tmp_path):
    a = fingerprint(Folder(_images(tmp_path / "a")))
    (tmp_path / "a").rename(tmp_path / "b")
    assert fingerprint(Folder(tmp_path / "b")).digest == a.digest


def test_a_root_folder_and_path_items_are_hashed_by_content(tmp_path, reads):
    root = _images(tmp_path / "images", 4)

    class Rooted(Dataset):
        def __init__(self):
            self.root = root

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return i

    fp = fingerprint(Rooted())
    assert (fp.method, fp.files) == ("files", 4)
    paths = fingerprint(Items(lambda i: (root / f"img{i:03d}.png", i), 4))
    assert paths.status == "complete"
    (root / "img000.png").write_bytes(b"other")
    assert fingerprint(Rooted()).digest != fp.digest
    assert fingerprint(Items(lambda i: (root / f"img{i:03d}.png", i), 4)).digest != paths.digest


# -- where it runs ----------------------------------------------------------------------------
def test_only_rng_free_methods_run_in_the_background():
    assert plan(TensorDataset(torch.zeros(3))).where == "background"
    assert plan([1, 2, 3]).where == "background"
    assert plan([("text", 1), ("more", 0)]).where == "deferred"  # Python work holding the GIL: at the end
    assert plan(Items(lambda i: i)).where == "deferred"  # __getitem__ may draw from the global generators


class Gate:
    """A numeric array whose conversion waits until released: a hash that lasts as long as the test wants."""

    def __init__(self, n: int):
        self.values = np.arange(n)
        self.dtype = self.values.dtype
        self.entered, self.release = threading.Event(), threading.Event()

    def __array__(self, dtype=None, copy=None):
        self.entered.set()
        assert self.release.wait(60)
        return self.values

    def __len__(self):
        return len(self.values)


class Gated(Vision):
    def __init__(self, n: int = 32):
        super().__init__(Gate(n), list(range(n)))


def _entity(run, name):
    return next(e for e in reversed(run.extra_entities) if e["name"] == name)


def test_a_slow_fingerprint_does_not_delay_the_start_and_end_run_waits_for_it(run_args):
    ds = Gated()
    run = prov4ml.start_run(**run_args)
    released = []
    # runs when end_run starts, before end_run waits for the fingerprint
    run.before_end(lambda r, status: released.append(ds.data.release.set()))
    prov4ml.log_dataset("gated", ds)  # returns while the hash is blocked in its thread
    assert ds.data.entered.wait(30) and not ds.data.release.is_set()
    assert _entity(run, "gated")["attributes"]["fingerprint_status"] == "pending"
    assert _entity(run, "gated")["attributes"]["fingerprint_method"] == "buffers"
    with warnings.catch_warnings():
        warnings.simplefilter("error", Prov4MLWarning)
        out = prov4ml.end_run()
    assert released
    (entity,) = by_type(read_prov(out.prov_json), "Dataset")
    assert attr(entity, "fingerprint_status") == "complete" and len(attr(entity, "fingerprint")) == 64


def test_a_fingerprint_still_missing_at_the_end_is_pending_with_one_warning(run_args, monkeypatch):
    monkeypatch.setenv("PROV4ML_FINGERPRINT_WAIT", "0")
    ds = Gated()
    prov4ml.start_run(**run_args)
    prov4ml.log_dataset("gated", ds)
    assert ds.data.entered.wait(30)
    try:
        with pytest.warns(Prov4MLWarning, match=r"fingerprint of gated was not ready.*'pending'") as caught:
            out = prov4ml.end_run()
    finally:
        ds.data.release.set()
    assert len([w for w in caught if "not ready" in str(w.message)]) == 1
    (entity,) = by_type(read_prov(out.prov_json), "Dataset")
    assert attr(entity, "fingerprint_status") == "pending" and attr(entity, "fingerprint") is None


class Starved(Gate):
    """Blocks in the background thread only: a hash that gets no CPU there (a machine kept busy)."""

    def __array__(self, dtype=None, copy=None):
        if threading.current_thread() is threading.main_thread():
            return self.values
        return super().__array__(dtype, copy)


def test_a_background_hash_that_does_not_move_is_done_by_the_run_end(run_args, monkeypatch):
    from prov4ml_lightning.capture import dataset_records

    monkeypatch.setattr(dataset_records, "_STALL_S", 0.05)
    ds = Vision(Starved(32), list(range(32)))
    prov4ml.start_run(**run_args)
    prov4ml.log_dataset("starved", ds)
    assert ds.data.entered.wait(30)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Prov4MLWarning)
            out = prov4ml.end_run()
    finally:
        ds.data.release.set()
    (entity,) = by_type(read_prov(out.prov_json), "Dataset")
    assert attr(entity, "fingerprint_status") == "complete"
    assert attr(entity, "fingerprint") == fingerprint(Vision(np.arange(32), list(range(32)))).digest


def test_log_dataset_leaves_the_training_random_streams_alone(run_args):
    class RandomTransform(Items):
        def __getitem__(self, i):
            return torch.rand(2) + random.random()

    prov4ml.start_run(**run_args)
    torch.manual_seed(5), random.seed(5)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(5), random.seed(5)
    prov4ml.log_dataset("random", RandomTransform(None))  # deferred: nothing read yet
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    out = prov4ml.end_run()
    (entity,) = by_type(read_prov(out.prov_json), "Dataset")
    assert (attr(entity, "fingerprint_status"), attr(entity, "fingerprint_method")) == ("complete", "items")


# -- the entity's life: named by content later, journalled, recovered ---------------------------------
def test_a_loader_entity_gets_its_content_name_when_the_hash_ends_also_after_a_crash(run_args, prov_dir):
    ds = Gated()
    run = prov4ml.start_run(**run_args)
    name = declare_loader(run, DataLoader(ds, batch_size=4), "train", 0)
    assert name == "train0.Gated"  # the fingerprint is not known yet
    run.start_activity("epoch_0", "TrainingEpoch", "epoch 0", used=[("dataset", name)])
    ds.data.release.set()
    journal = journal_path(prov_dir, run.run_id)
    update = wait_until(lambda: next((e for e in read_journal(journal) if e["event"] == "entity_update"), None),
                        timeout=30, what="the fingerprint in the journal")
    final = update["prov_name"]
    assert final == f"train0.{update['attributes']['fingerprint'][:16]}"
    run.end_activity("epoch_0")

    # what `prov4ml recover` rebuilds from the journal of a run killed now
    (recovered,) = recover(prov_dir, run_id=run.run_id)
    for path in (recovered.prov_json, prov4ml.end_run().prov_json):
        doc = read_prov(path)
        (entity,) = by_type(doc, "Dataset")
        assert str(entity.identifier).endswith(f".dataset.{final}")
        assert attr(entity, "fingerprint_status") == "complete"
        used = {(str(u.formal_attributes[0][1]), str(u.formal_attributes[1][1])) for u in records_of(doc, "used")}
        assert any(a.endswith(".epoch_0") and e == str(entity.identifier) for a, e in used)


def test_two_loaders_over_the_same_data_are_one_entity(run_args):
    ds = TensorDataset(torch.randn(16, 2))
    run = prov4ml.start_run(**run_args)
    a = declare_loader(run, DataLoader(ds, batch_size=4), "val", 0)
    b = declare_loader(run, DataLoader(ds, batch_size=4), "val", 0)
    run.start_activity("v1", "ValidationLoop", "validation 1", used=[("dataset", a)])
    run.start_activity("v2", "ValidationLoop", "validation 2", used=[("dataset", b)])
    doc = read_prov(prov4ml.end_run().prov_json)
    (entity,) = by_type(doc, "Dataset")
    assert len([u for u in records_of(doc, "used") if u.formal_attributes[1][1] == entity.identifier]) == 2
