"""Write ../shared/bench's NAME.train.json from a run's metrics.jsonl (median tok/s, first interval left out)."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    """Parse the arguments and write the JSON file."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--mode", default="speed")
    ap.add_argument("--budget-s", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16-probe", type=float, nargs="*", default=[], help="bf16 matmul probes beside the run")
    args = ap.parse_args()
    records = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r["type"] == "train"]
    steps = train[-1]["step"] if train else 0  # the logged steps (a stop between log lines leaves a few out)
    total = sum(r["tgt_tokens"] for r in train)
    evals = [r for r in records if r["type"] == "eval"]
    config = __import__("yaml").safe_load((args.run_dir / "config.yaml").read_text())
    out = {
        "steps": steps,
        "tgt_tok_s": round(statistics.median(r["tgt_tok_s"] for r in train[1:]), 1) if len(train) > 1 else 0.0,
        "total_tgt_tokens": total,
        "tgt_tok_per_step": total / steps if steps else 0.0,
        "mode": args.mode,
        "budget_s": args.budget_s,
        "warmup": config["train"]["warmup"],
        "lr": config["train"]["lr"],
        "threads": args.threads,
        "precision": config["train"]["precision"],
    }
    gflops = [r["gflops"] for r in train[1:] if "gflops" in r]
    if gflops:  # matmul work counted from the batches' real lengths (older runs do not log it)
        out["gflops"] = round(statistics.median(gflops), 1)
        if args.bf16_probe:  # the distance to the ceiling: logged median ÷ the best bf16 probe taken beside the run
            out.update(bf16_probe=args.bf16_probe, of_bf16_probe=round(out["gflops"] / max(args.bf16_probe), 3))
    if evals:  # the checkpoint translate decodes (best.pt): the evaluation with the highest dev BLEU
        best = max(evals, key=lambda r: r["dev_bleu"])
        out.update(
            dev_ref_ppl=round(best["dev_ppl"], 2),
            dev_bleu=round(best["dev_bleu"], 2),
            val_ppl=[round(r["dev_ppl"], 2) for r in evals],
        )
    args.out.write_text(json.dumps(out) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
