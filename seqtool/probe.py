"""The machine's matmul ceiling right now: how fast one large matrix product runs, in GFLOP/s.

Training throughput is measured against it (`seqtool train --probe`, `tests/benchmarks/bench_step.py`): the host's
speed changes through the day, so a run's achieved GFLOP/s means something only beside a probe taken with it.
"""

from __future__ import annotations

import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_gflops(
    dtype: str = "bf16", threads: int = 2, device: torch.device | None = None, size: int = 1024, repeat: int = 100
) -> float:
    """The best of three timings of `repeat` size×size products in `dtype`, on `threads` CPU threads or `device`."""
    device = device or torch.device("cpu")
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        x = torch.randn(size, size, device=device).to(DTYPES[dtype])
        y = torch.randn(size, size, device=device).to(DTYPES[dtype])
        for _ in range(5):  # warm-up: oneDNN (or cuBLAS) picks and caches its kernel
            x @ y
        best = 0.0
        for _ in range(3):
            _synchronize(device)
            started = time.perf_counter()
            for _ in range(repeat):
                x @ y
            _synchronize(device)  # CUDA products are queued: wait for them before reading the clock
            best = max(best, repeat * 2 * size**3 / (time.perf_counter() - started) / 1e9)
        return best
    finally:
        torch.set_num_threads(before)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
