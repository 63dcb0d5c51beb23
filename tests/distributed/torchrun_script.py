"""The functional API in a plain ``torch.distributed`` script, run by tests/distributed/test_distributed.py with
``python -m torch.distributed.run --nproc_per_node=2 --standalone tests/distributed/torchrun_script.py ROOT``.

Two runs, one after the other, the same code on every rank: ``collect_all_ranks=False`` (rank 0
alone records) and ``collect_all_ranks=True`` (every rank's metrics, param and artifact reach rank
0's run). Prints ``RANK <k> RUN <collect> <run_id>`` per run and rank.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import prov4ml_lightning as prov4ml


def main() -> None:
    root = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for collect in (False, True):
        prov4ml.start_run(prov_user_namespace="www.example.org", experiment_name="torchrun",
                          provenance_save_dir=root / "prov", mlflow_save_dir=root / "mlflow",
                          run_name=f"collect-{collect}", collect_all_ranks=collect)
        prov4ml.log_param("rank_seed", 100 + rank)
        for step in range(5):
            value = torch.tensor(float(rank * 10 + step))
            dist.all_reduce(value)  # real traffic between the ranks while they record
            prov4ml.log_metric("loss", float(rank + step), step=step)
            prov4ml.log_metric("reduced", value, step=step)
        notes = root / f"notes_rank{rank}.txt"
        notes.write_text(f"rank {rank}\n")
        prov4ml.log_artifact(notes)
        sys.stdout.write(f"RANK {rank} RUN {collect} {prov4ml.get_run_id()}\n")
        sys.stdout.flush()
        prov4ml.end_run()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
