"""What finding partial loads costs: per-tensor hashes, tensor groups, their tags and lookups.

- Hashing: ``state_dict_sha256`` as it is now (each tensor's own sha256, the whole over those, and
  the trivial-tensor check the groups need) against the previous definition (one sha256 over
  every key, dtype, shape and the bytes, in key order: written out below as the baseline), and
  ``tensor_groups`` over the kept tensor hashes, on state dicts of a small MLP, of ResNet-50's
  shapes (25.6 M parameters in 320 tensors) and of BERT-base's (110 M in 199 tensors), random
  float32 on the CPU. Median of ``--repeats``.
- The store: an embedded SQLite store holding ``--runs`` runs tagged as producers are (one whole
  ``prov4ml.weights.<hash>`` tag and 24 group tags each); the time of one ``set_tags`` of a state
  dict's 25 tags (what a logged model or checkpoint adds), and of one ``find_weights`` lookup of a
  group hash no run holds and of one a run holds (a starting run whose weights no run holds whole
  makes up to 24 of them, off the training thread).

    python benchmarks/weight_hashes.py                  # results/weight_hashes.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def previous_state_dict_sha256(state_dict: dict[str, Any]) -> str:
    """The definition before per-tensor hashes: one sha256 stream over every entry (the baseline)."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        h.update(key.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"{str(t.dtype).removeprefix('torch.')}{tuple(value.shape)}".encode() + b"\0")
            if t.numel():
                h.update(t.view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(value).encode())
        h.update(b"\0")
    return h.hexdigest()


def state_dicts() -> dict[str, dict[str, Any]]:
    import torch

    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    mlp = {"backbone.0.weight": r(256, 784), "backbone.0.bias": r(256), "backbone.2.weight": r(256, 256),
           "backbone.2.bias": r(256), "head.weight": r(10, 256), "head.bias": r(10)}
    resnet: dict[str, Any] = {"conv1.weight": r(64, 3, 7, 7)}
    for name in ("weight", "bias", "running_mean", "running_var"):
        resnet[f"bn1.{name}"] = r(64)
    resnet["bn1.num_batches_tracked"] = torch.tensor(0)
    inplanes = 64
    for layer, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            shapes = {"conv1": (planes, inplanes, 1, 1), "conv2": (planes, planes, 3, 3),
                      "conv3": (planes * 4, planes, 1, 1)}
            if b == 0:
                shapes["downsample.0"] = (planes * 4, inplanes, 1, 1)
            for conv, shape in shapes.items():
                resnet[f"{p}.{conv}.weight"] = r(*shape)
                bn = f"{p}.{'downsample.1' if conv == 'downsample.0' else conv.replace('conv', 'bn')}"
                for name in ("weight", "bias", "running_mean", "running_var"):
                    resnet[f"{bn}.{name}"] = r(shape[0])
                resnet[f"{bn}.num_batches_tracked"] = torch.tensor(0)
            inplanes = planes * 4
    resnet["fc.weight"], resnet["fc.bias"] = r(1000, 2048), r(1000)
    bert: dict[str, Any] = {"embeddings.word_embeddings.weight": r(30522, 768),
                            "embeddings.position_embeddings.weight": r(512, 768),
                            "embeddings.token_type_embeddings.weight": r(2, 768),
                            "embeddings.LayerNorm.weight": torch.ones(768),
                            "embeddings.LayerNorm.bias": torch.zeros(768)}
    for i in range(12):
        p = f"encoder.layer.{i}"
        for lin, (out, inp) in {"attention.self.query": (768, 768), "attention.self.key": (768, 768),
                                "attention.self.value": (768, 768), "attention.output.dense": (768, 768),
                                "intermediate.dense": (3072, 768), "output.dense": (768, 3072)}.items():
            bert[f"{p}.{lin}.weight"], bert[f"{p}.{lin}.bias"] = r(out, inp), r(out)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            bert[f"{p}.{ln}.weight"], bert[f"{p}.{ln}.bias"] = torch.ones(768), torch.zeros(768)
    bert["pooler.dense.weight"], bert["pooler.dense.bias"] = r(768, 768), r(768)
    return {"mlp": mlp, "resnet50_shapes": resnet, "bert_base_shapes": bert}


def median_s(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def hashing(repeats: int) -> list[dict[str, Any]]:
    import torch

    from prov4ml_lightning.capture import model_info
    from prov4ml_lightning.capture.model_info import state_dict_sha256, tensor_groups, weight_groups

    rows = []
    for name, sd in state_dicts().items():
        tensors = [v for v in sd.values() if isinstance(v, torch.Tensor)]
        size = sum(t.numel() * t.element_size() for t in tensors)
        before = median_s(lambda sd=sd: previous_state_dict_sha256(sd), repeats)
        now = median_s(lambda sd=sd: state_dict_sha256(sd), repeats)
        digest = state_dict_sha256(sd)
        kept = model_info._recent[digest]
        groups_s = median_s(lambda kept=kept: tensor_groups(kept), repeats)
        grouped = weight_groups(digest)
        assert grouped is not None
        rows.append({"state_dict": name, "tensors": len(tensors), "mb": round(size / 1e6, 1),
                     "previous_hash_s": round(before, 4), "hash_s": round(now, 4),
                     "overhead_pct": round(100 * (now - before) / before, 1),
                     "groups": len(grouped[0]), "groups_ms": round(groups_s * 1000, 2),
                     "tag_bytes": len(json.dumps({"parts": [[p, n, grouped[1], "model", "net", "v1"]
                                                            for p, (_, n) in grouped[0].items()]}))})
        print(rows[-1], flush=True)
    return rows


def store(runs: int, repeats: int) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from prov4ml_lightning.sinks.mlflow.rules import WEIGHTS_TAG_PREFIX, default_tracking_uri
    from prov4ml_lightning.sinks.mlflow.sink import MlflowSink
    from prov4ml_lightning.sinks.mlflow.store import open_client

    with tempfile.TemporaryDirectory() as tmp:
        uri = default_tracking_uri(tmp)
        open_client(uri)
        client = MlflowClient(uri)
        exp = client.create_experiment(f"weights-{uuid.uuid4().hex[:6]}")
        held = None
        t0 = time.perf_counter()
        for i in range(runs):
            run = client.create_run(exp)
            value = json.dumps({"ns": "http://www.example.org/", "run": run.info.run_id,
                                "parts": [["model.backbone", 4, 6, "model", "net", "v1"]]})
            tags = {WEIGHTS_TAG_PREFIX + hashlib.sha256(f"{i}.{g}".encode()).hexdigest(): value for g in range(25)}
            for key, val in tags.items():
                client.set_tag(run.info.run_id, key, val)
            held = held or next(iter(tags))
        fill_s = time.perf_counter() - t0
        sink = MlflowSink(uri, Path(tmp))
        missing = f"{0:064x}"
        sink.find_weights(missing)  # warm
        lookup_none = median_s(lambda: sink.find_weights(missing), repeats)
        assert held is not None
        digest = held[len(WEIGHTS_TAG_PREFIX):]
        lookup_hit = median_s(lambda: sink.find_weights(digest), repeats)
        assert len(sink.find_weights(digest)) == 1
        run = client.create_run(exp)
        batch = [(WEIGHTS_TAG_PREFIX + hashlib.sha256(f"new.{g}".encode()).hexdigest(), "{}") for g in range(25)]
        t0 = time.perf_counter()
        sink.set_tags(run.info.run_id, batch)
        set_s = time.perf_counter() - t0
    row = {"runs": runs, "tags_per_run": 25, "fill_s": round(fill_s, 1),
           "find_weights_none_ms": round(lookup_none * 1000, 1), "find_weights_hit_ms": round(lookup_hit * 1000, 1),
           "set_tags_25_ms": round(set_s * 1000, 1)}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "weight_hashes.json"))
    args = parser.parse_args()
    import torch

    result = {"torch_threads": torch.get_num_threads(), "hashing": hashing(args.repeats),
              "store": store(args.runs, args.repeats)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
