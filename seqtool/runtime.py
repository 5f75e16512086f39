"""Process-wide runtime settings: seeds (set in this one place), device, threads, autocast."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from seqtool.errors import SeqtoolError


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process `rank` of a job: `seed` itself for rank 0 (a single process), a derived one for the others
    (so that the ranks draw different dropout masks)."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices) for process `rank` of a job (see `rank_seed`)."""
    seed = rank_seed(seed, rank)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; an explicit device that is not available is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SeqtoolError("device 'cuda' requested but CUDA is not available", "use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SeqtoolError("device 'mps' requested but MPS is not available", "use --device cpu or auto")
    return torch.device(name)


# oneDNN (bf16 matmuls on CPU) caches a compiled primitive per input shape, 1024 by default. Length-bucketed batches
# bring a new shape nearly every step, so a bf16 training run grew from 2.2 to 4.2 GB RSS over 250 steps; with 16
# the growth stops (2.4 GB) at no measured speed cost. Read by oneDNN at its first primitive, so set early.
ONEDNN_CACHE_CAPACITY = "16"


def limit_onednn_cache() -> None:
    """Keep oneDNN's per-shape primitive cache small (unless the user set ONEDNN_PRIMITIVE_CACHE_CAPACITY)."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)


# glibc's malloc serves large blocks with a fresh mmap and unmaps them on free, so every training step page-faults
# its logits-sized buffers (tokens × vocabulary, ~120 MB in fp32) in anew: a copy into one is 3x slower. Served from
# the heap and kept after free, they are reused without faults: +8 to +27 % tok/s for a bf16 step, +4 % fp32, on a
# 2-core AMD EPYC (tests/benchmarks/README.md, 2026-12-04); peak RSS within noise (the same buffers are live at the
# peak either way).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD = 1 << 30  # blocks above 1 GiB still get their own mapping
_TRIM_THRESHOLD = 2**31 - 1  # up to ~2 GB freed at the top of the heap is kept, not returned to the system
_TOP_PAD = 1 << 26  # the heap grows by 64 MB more than asked (untouched pages cost no RSS)


def keep_freed_memory() -> bool:
    """Make glibc keep large freed blocks for reuse instead of unmapping them (see above); False where the C library
    is not glibc (macOS, musl), where nothing is changed. Process-wide; affects allocations made after the call."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD))
    return all(mallopt(option, value) == 1 for option, value in settings)


def set_threads(threads: int) -> None:
    """Use `threads` CPU threads for torch ops (0 keeps torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def decode_parallelism(threads: int, workers: int, on_cpu: bool, greedy: bool = False) -> tuple[int, int]:
    """(workers, threads per worker) for translating: batches searched at once, and each one's CPU threads.

    `threads` is the CPU threads in all (0: torch's default, one per core). `workers` 0 chooses: on a CPU one per
    thread, since a small model's ops keep one core busy, not two; but one for seqtool's own greedy search
    (`greedy`), whose steps are too short to gain from it; and one on a GPU. The workers share the threads.
    """
    total = threads or torch.get_num_threads()
    if workers == 0:
        workers = total if on_cpu and not greedy else 1
    return workers, max(1, total // workers)


@functools.cache
def cpu_bf16_supported() -> bool:
    """Whether this CPU has oneDNN's bf16 kernels (AVX-512 bf16 or AMX); asked once."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is worthwhile on `device`."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16_supported()
    return False


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast when precision == 'bf16', otherwise a no-op."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
