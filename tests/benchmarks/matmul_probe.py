"""The machine's matmul ceiling right now (`seqtool.probe`): the best of 3 × 100 products of two 1024² matrices.

The fp32 probe is the shared benchmark's (`../shared/bench/bench_lib.py cpu-probe`); this one also does bf16, the
ceiling training under `train.precision: bf16` is measured against (AMX or AVX-512 bf16 CPUs, GPUs):

    .venv/bin/python tests/benchmarks/matmul_probe.py --dtype bf16 --threads 2
    {"dtype": "bf16", "threads": 2, "matmul_gflops": 1357.0, "at": "09:12:03"}
"""

from __future__ import annotations

import argparse
import json
import time

from seqtool.probe import DTYPES, matmul_gflops


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
