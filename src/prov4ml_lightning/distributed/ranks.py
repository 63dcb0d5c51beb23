"""Who this process is in a distributed job, and the one exchange the ranks make: the run id.

A rank is described by :class:`RankInfo`, read from the Lightning trainer
(:func:`rank_from_trainer`) or, for the functional API in a ``torchrun`` script, from
``torch.distributed`` and the launcher's environment variables (:func:`rank_from_env`).

Global rank zero alone opens the MLflow run; :func:`share_run` hands its id (or the error that
stopped it) to every rank with one broadcast that all ranks join, outside any rank-zero branch.
Ranks other than zero then record into a part folder of their own that rank zero merges when the
run ends (see :mod:`prov4ml_lightning.distributed.parts`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prov4ml_lightning.errors import Prov4MLError

__all__ = ["RankInfo", "rank_from_env", "rank_from_trainer", "share_run", "torch_broadcast"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankInfo:
    """One process of a (possibly) distributed job."""

    global_rank: int = 0
    local_rank: int = 0
    node_rank: int = 0
    world_size: int = 1
    host: str = field(default_factory=socket.gethostname)
    device: str = "cpu"
    pid: int = field(default_factory=os.getpid)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def label(self) -> str:
        return (f"rank {self.global_rank} (node {self.node_rank}, local rank {self.local_rank}) "
                f"on {self.host}, {self.device}")

    def attributes(self) -> dict[str, Any]:
        """The rank's PROV attributes (and its journal entry)."""
        return {"global_rank": self.global_rank, "local_rank": self.local_rank, "node_rank": self.node_rank,
                "world_size": self.world_size, "host": self.host, "device": self.device, "pid": self.pid}


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                log.warning("prov4ml: ignoring %s=%r (not an integer)", name, value)
    return default


def _default_device(local_rank: int) -> str:
    try:
        import torch

        if torch.cuda.is_available():
            # Asking CUDA for its current device would initialise it in this process; the
            # launchers' convention is one GPU per local rank.
            index = torch.cuda.current_device() if torch.cuda.is_initialized() else local_rank
            return f"cuda:{index}"
    except Exception as err:  # a broken CUDA install must not stop the run
        log.debug("prov4ml: no CUDA device information (%s)", err)
    return "cpu"


def rank_from_env() -> RankInfo:
    """This process as ``torch.distributed`` (when initialised) and the launcher's variables see it.

    ``RANK``/``WORLD_SIZE`` (torchrun), ``LOCAL_RANK``, and ``GROUP_RANK`` (torchrun) or
    ``NODE_RANK`` (Lightning) for the node. Lightning's launcher gives the processes it starts
    ``LOCAL_RANK``/``NODE_RANK``/``WORLD_SIZE`` but no ``RANK``: the global rank is then derived
    from them (exactly on the first node or with ``LOCAL_WORLD_SIZE``; otherwise only known not
    to be zero, which is what decides who writes).
    """
    node = _env_int(("GROUP_RANK", "NODE_RANK"), 0)
    world = _env_int(("WORLD_SIZE",), 1)
    rank = _env_int(("RANK",), -1)
    if rank < 0:
        local = _env_int(("LOCAL_RANK",), 0)
        per_node = _env_int(("LOCAL_WORLD_SIZE",), 0)
        rank = node * per_node + local if per_node else local + node
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    local = _env_int(("LOCAL_RANK",), rank if world > 1 else 0)
    return RankInfo(global_rank=rank, local_rank=local, node_rank=node, world_size=max(world, 1),
                    device=_default_device(local) if world > 1 else "cpu")


def rank_from_trainer(trainer: Any) -> RankInfo:
    """This process as the Lightning trainer's strategy sees it."""
    try:
        device = str(trainer.strategy.root_device)
    except Exception:  # a strategy without a root device yet
        device = _default_device(int(trainer.local_rank))
    return RankInfo(global_rank=int(trainer.global_rank), local_rank=int(trainer.local_rank),
                    node_rank=int(trainer.node_rank), world_size=int(trainer.world_size), device=device)


def torch_broadcast(obj: Any) -> Any:
    """``obj`` of global rank zero on every rank (a ``torch.distributed`` collective)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share_run(rank: RankInfo, open_zero: Callable[[], tuple[Any, dict[str, Any]]],
              broadcast: Callable[[Any], Any], call: str) -> tuple[Any, dict[str, Any]]:
    """Rank zero runs ``open_zero()`` -> ``(run, shared)``; every rank gets ``shared``.

    Every rank must call this at the same point: the broadcast is a collective, and it is the
    one place the ranks meet. When rank zero fails to open its run, the failure is broadcast
    instead, so every rank raises rather than one rank waiting for a peer that went away.

    Returns:
        ``(run, shared)``: the run on rank zero (``None`` elsewhere), and rank zero's ``shared``
        mapping (``run_id``, ``session``, ...).
    """
    run, failure = None, None
    shared: Any = None
    if rank.global_rank == 0:
        try:
            run, shared = open_zero()
        except Exception as err:
            failure, shared = err, {"error": f"{type(err).__name__}: {err}"}
    if rank.distributed:
        shared = broadcast(shared)
    if failure is not None:
        raise failure
    if not isinstance(shared, Mapping) or "error" in shared:
        error = shared.get("error") if isinstance(shared, Mapping) else repr(shared)
        raise Prov4MLError(f"{call} on rank {rank.global_rank}: global rank 0 could not open the run ({error})")
    return run, dict(shared)
