"""What only a GPU machine can check, run by hand on one (never in CI): results in docs/performance.md.

1. CUDA 0-d tensors through ``log_metric`` (float32, bfloat16, int64 above 2**24): the call costs
   no device sync (timed against ``.item()``), and MLflow and PROV get the exact values back.
2. The captured environment names the GPU; ``log_system_metrics`` samples it through NVML.
3. ``log_model`` of a CUDA module loads back and gives the same outputs.
4. ``Prov4MLCallback`` on a GPU fit (``accelerator="gpu"``): one FINISHED run with every point,
   and the step time next to bare Lightning, alternating in separate processes.

Usage: ``python benchmarks/gpu_check.py OUT_DIR [--rounds 2] [--epochs 2]`` (``--device cpu``
rehearses it on a machine without a GPU). Writes ``OUT_DIR/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
NS = "www.example.org"


def _api_checks(work: Path, device: str) -> dict[str, Any]:
    import torch
    from mlflow.tracking import MlflowClient

    import prov4ml_lightning as prov4ml
    from prov4ml_lightning.provenance import flatten, load_document
    from prov4ml_lightning.sinks.mlflow.sink import default_tracking_uri

    out: dict[str, Any] = {"device": device}
    dev = torch.device(device)
    big = 2**25 + 1
    run = prov4ml.start_run(NS, "gpu-check", work / "prov", work / "mlflow", log_system_metrics=True,
                            system_metrics_interval=0.5)
    x = torch.randn(256, 256, device=dev)
    # Hot path with values that live on the device: the call must not wait for the device.
    times, item_times = [], []
    for i in range(2000):
        loss = (x @ x).mean()  # queued work: reading it forces a sync
        t = time.perf_counter_ns()
        prov4ml.log_metric("loss", loss, step=i)
        times.append(time.perf_counter_ns() - t)
        loss2 = (x @ x).mean()
        t = time.perf_counter_ns()
        loss2.item()
        item_times.append(time.perf_counter_ns() - t)
    out["log_metric_cuda_tensor_median_us"] = statistics.median(times) / 1000
    out["item_median_us"] = statistics.median(item_times) / 1000
    prov4ml.log_metric("big", torch.tensor(big, device=dev), step=0)
    prov4ml.log_metric("half", torch.tensor(1.5, dtype=torch.bfloat16, device=dev), step=0)
    prov4ml.log_metric("small", torch.tensor(0.25, device=dev), step=0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).to(dev)
    prov4ml.log_model(model, "gpu_mlp")
    time.sleep(1.2)  # two system-metric samples
    outputs = prov4ml.end_run()
    client = MlflowClient(default_tracking_uri(work / "mlflow"))
    metrics = client.get_run(run.run_id).data.metrics
    out["mlflow_points_loss"] = len(client.get_metric_history(run.run_id, "training/loss"))
    out["mlflow_big"] = [m.value for m in client.get_metric_history(run.run_id, "training/big")]
    out["mlflow_half"] = [m.value for m in client.get_metric_history(run.run_id, "training/half")]
    out["exact_values"] = out["mlflow_big"] == [float(big)] and out["mlflow_half"] == [1.5]
    out["gpu_system_keys"] = sorted(k for k in metrics if "/gpu" in k)
    elements, _ = flatten(load_document(outputs.prov_json))
    env = next((e.attrs for e in elements if e.has_type("Environment")), {})
    out["environment_gpu"] = {k: v for k, v in env.items() if k.startswith("gpu") or k.startswith("torch_cuda")}
    model_uri = next((e.attrs.get("model_uri") for e in elements if e.has_type("Model")), None)
    out["model_uri"] = model_uri
    try:
        import mlflow.pytorch

        mlflow.set_tracking_uri(client.tracking_uri)
        loaded = mlflow.pytorch.load_model(model_uri, map_location=dev)
        probe = torch.randn(4, 8, device=dev)
        out["model_loads_back_same_outputs"] = bool(torch.allclose(loaded(probe), model(probe)))
    except Exception as err:  # report, do not hide the rest
        out["model_loads_back_same_outputs"] = f"error: {err!r}"
    return out


def _fit_child(cfg: str, epochs: int, work: str, accelerator: str) -> None:
    """One fit in this process (``bare`` or ``prov4ml``); prints one JSON line."""
    import torch
    torch.set_num_threads(1)
    import _workload as w
    import lightning.pytorch as pl

    import prov4ml_lightning as prov4ml

    warnings.filterwarnings("ignore")
    probe = w.Probe()
    callbacks: list[Any] = [probe]
    cb = None
    if cfg == "prov4ml":
        cb = prov4ml.Prov4MLCallback(NS, "gpu-fit", f"{work}/prov", f"{work}/mlflow")
        callbacks.append(cb)
    trainer = pl.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False, callbacks=callbacks,
                         log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=work)
    tl, vl = w.loaders()
    trainer.fit(w.Regressor(), tl, vl)
    steps = [b - a for epoch in probe.batch_starts[1:] for a, b in itertools.pairwise(epoch)]
    result = {"cfg": cfg, "step_ms": statistics.median(steps) * 1000,
              "epoch_mean_step_ms": statistics.fmean(steps) * 1000}
    if cb is not None:
        from mlflow.tracking import MlflowClient

        from prov4ml_lightning.sinks.mlflow.sink import default_tracking_uri

        client = MlflowClient(default_tracking_uri(f"{work}/mlflow"))
        run = client.get_run(cb.run_id)
        result["status"] = run.info.status
        result["points"] = {k: len(client.get_metric_history(cb.run_id, f"{c}/{k}"))
                            for k, c in (("train_loss", "training"), ("train_mae", "training"),
                                         ("val_loss", "validation"))}
        result["expected"] = w.expected_points(epochs)
        result["prov_json"] = str(cb.outputs.prov_json)
    print("RESULT " + json.dumps(result), flush=True)


def _fit_rounds(work: Path, rounds: int, epochs: int, accelerator: str) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        for cfg in (("bare", "prov4ml") if r % 2 == 0 else ("prov4ml", "bare")):
            wd = work / f"fit_{r}_{cfg}"
            # mlflow.set_tracking_uri (used above to load the model back) exports MLFLOW_TRACKING_URI,
            # which the child's run would follow: each fit gets its own embedded store instead.
            env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
            proc = subprocess.run([sys.executable, __file__, "--child", cfg, "--epochs", str(epochs),
                                   "--accelerator", accelerator, str(wd)],
                                  capture_output=True, text=True, timeout=300, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                runs.append({"cfg": cfg, "error": proc.stderr[-2000:]})
                continue
            runs.append(json.loads(line[7:]))
    ok = [x for x in runs if "error" not in x]
    ratios = []
    for r in range(rounds):
        pair = {x["cfg"]: x for x in ok[2 * r: 2 * r + 2]} if len(ok) >= 2 * r + 2 else {}
        if {"bare", "prov4ml"} <= set(pair):
            ratios.append(pair["prov4ml"]["epoch_mean_step_ms"] / pair["bare"]["epoch_mean_step_ms"] - 1)
    return {"runs": runs, "overhead_per_round": ratios,
            "median_overhead": statistics.median(ratios) if ratios else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder for gpu_check.json (and the runs' files)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to rehearse")
    parser.add_argument("--accelerator", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _fit_child(args.child, args.epochs, args.out, args.accelerator or "gpu")
        return
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    import torch

    result: dict[str, Any] = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                              "dot": bool(subprocess.run(["sh", "-c", "command -v dot"], capture_output=True).stdout)}
    t0 = time.time()
    try:
        result["api"] = _api_checks(work / "api", args.device)
    except Exception as err:
        import traceback

        result["api"] = {"error": repr(err), "traceback": traceback.format_exc()[-3000:]}
    result["api_seconds"] = time.time() - t0
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    result["fit"] = _fit_rounds(work / "fit", args.rounds, args.epochs, accelerator)
    result["seconds"] = time.time() - t0
    (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str)[:6000])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
