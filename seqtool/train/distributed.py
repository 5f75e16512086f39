"""Data-parallel training with PyTorch's own engine: torch.distributed set up from torchrun's environment.

`torchrun --nproc-per-node N -m seqtool train CONFIG` starts N processes with RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address in their environment; `init_distributed` joins them (gloo on CPU, nccl on CUDA). In a plain
`seqtool train` (no WORLD_SIZE) everything here is a no-op on one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from seqtool.errors import TrainingError

# Rank 0 validates and saves while the others wait in the next collective: generous, but a dead peer still ends it.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and the progress bar."""
        return self.rank == 0


def context_from_env() -> DistContext:
    """The job layout torchrun put in the environment (one process when there is none)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistContext(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the torchrun job if there is one; returns the context and this rank's device (cuda:LOCAL_RANK on GPUs)."""
    ctx = context_from_env()
    if not ctx.enabled:
        return ctx, device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    # on GPUs the gradients go through nccl, while the small agreement tensors (stop flags, the clock) stay on the
    # CPU, which nccl cannot reduce: gloo takes those
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return ctx, device


def all_reduce(tensor: torch.Tensor, ctx: DistContext, op: str = "sum") -> torch.Tensor:
    """Sum (or max) `tensor` over all ranks in place; a no-op on one process. A dead peer becomes a TrainingError."""
    if not ctx.enabled:
        return tensor
    try:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    except (RuntimeError, dist.DistBackendError) as exc:
        raise peer_failure(exc) from None
    return tensor


def broadcast_flag(value: bool, ctx: DistContext) -> bool:
    """Rank 0's `value` on every rank."""
    if not ctx.enabled:
        return value
    flag = torch.tensor([1.0 if value else 0.0])
    try:
        dist.broadcast(flag, src=0)
    except (RuntimeError, dist.DistBackendError) as exc:
        raise peer_failure(exc) from None
    return bool(flag.item())


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (after rank 0 prepared the run directory, for instance)."""
    if ctx.enabled:
        try:
            dist.barrier()
        except (RuntimeError, dist.DistBackendError) as exc:
            raise peer_failure(exc) from None


_PEER_FAILURE_SIGNS = ("gloo", "nccl", "connection", "closed by peer", "timed out", "timeout", "broken pipe")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether an error raised inside a collective (e.g. DDP's backward all-reduce) says a peer went away."""
    text = str(exc).lower()
    return isinstance(exc, dist.DistBackendError) or any(sign in text for sign in _PEER_FAILURE_SIGNS)


def peer_failure(exc: BaseException) -> TrainingError:
    """The clear error a rank reports when a collective fails because another process died."""
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return TrainingError(
        f"another training process stopped, so this one cannot go on ({first})",
        "look for the first error printed by the other ranks; seqtool train --resume RUN_DIR continues from the "
        "last saved checkpoint",
    )


def shutdown(ctx: DistContext) -> None:
    """Leave the job (at the end of training)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
