"""The machine's matmul ceiling right now: the best of 3 × 100 products of two 1024² matrices, in GFLOP/s.

The fp32 probe is the shared benchmark's (`../shared/bench/bench_lib.py cpu-probe`); this one also does bf16, the
ceiling training under `train.precision: bf16` is measured against (AMX or AVX-512 bf16 CPUs, GPUs):

    .venv/bin/python tests/benchmarks/matmul_probe.py --dtype bf16 --threads 2
    {"dtype": "bf16", "threads": 2, "matmul_gflops": 1357.0, "at": "09:12:03"}
"""

from __future__ import annotations

import argparse
import json
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_gflops(dtype: str = "bf16", threads: int = 2, size: int = 1024, repeat: int = 100) -> float:
    """The best of three timings of `repeat` size² × size² products in `dtype` on `threads` threads (GFLOP/s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(size, size).to(DTYPES[dtype])
        y = torch.randn(size, size).to(DTYPES[dtype])
        for _ in range(5):  # warm-up: oneDNN picks and caches its kernel
            x @ y
        best = 0.0
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(repeat):
                x @ y
            best = max(best, repeat * 2 * size**3 / (time.perf_counter() - started) / 1e9)
        return best
    finally:
        torch.set_num_threads(before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    gflops = matmul_gflops(args.dtype, args.threads)
    print(json.dumps({"dtype": args.dtype, "threads": args.threads, "matmul_gflops": round(gflops, 1),
                      "at": time.strftime("%H:%M:%S")}))  # fmt: skip


if __name__ == "__main__":
    main()
