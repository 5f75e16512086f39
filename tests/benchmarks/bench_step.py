"""Micro-benchmark of seqtool's training step on the shared benchmark's data (for A/B comparisons of one change).

Runs the same work as `Trainer._update` (packed logits, fused loss, AdamW, schedule) on the harness's wesnoth
batches and prints target tokens/s, the median step time, peak RSS, the achieved matmul GFLOP/s (the model's
products counted from its shapes on the batches' real lengths: `seqtool.models.flops`) and its fraction of the
matmul ceiling in the same precision (`seqtool.probe`, run before and after the steps; the better one counts).
Compare two versions by running them alternately in one sitting (the host's speed drifts), e.g. from two git
worktrees with PYTHONPATH:

    .venv/bin/python tests/benchmarks/bench_step.py --precision bf16 --steps 40
    PYTHONPATH=/tmp/old .venv/bin/python tests/benchmarks/bench_step.py --precision bf16 --steps 40

Needs `bash ../shared/bench/peers.sh prep` first (the tokenizer and the filtered training pairs).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from seqtool.config import load_config
from seqtool.data.batching import Batch, BatchSampler, make_batch
from seqtool.models import build_model
from seqtool.models.flops import training_flops
from seqtool.probe import matmul_gflops
from seqtool.runtime import keep_freed_memory, limit_onednn_cache, seed_everything
from seqtool.tokenizer import Tokenizer
from seqtool.train.loss import batch_loss
from seqtool.train.optim import build_optimizer, build_scheduler

REPO = Path(__file__).resolve().parents[2]
DATA = Path.home() / ".cache/seqtool-peers/runs/data"


def main() -> None:
    """Time `--steps` training steps after 5 warm-up steps."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--config", type=Path, default=REPO / "recipes/bench-wesnoth.yaml")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--rss-every", type=int, default=0, help="print peak RSS every N steps (0 = only at the end)")
    ap.add_argument("--malloc-default", action="store_true", help="leave glibc's malloc as it is (for an A/B)")
    ap.add_argument("--unfused", action="store_true", help="the logits, then the loss (the output projection and "
                    "the loss not fused: for an A/B)")  # fmt: skip
    ap.add_argument("--profile", type=int, default=0, help="after the timed steps, profile N more with torch.profiler "
                    "and print the ops by self CPU time")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(2)
    limit_onednn_cache()
    if not args.malloc_default:
        keep_freed_memory()  # as `seqtool train` does
    seed_everything(42)
    cfg = load_config(args.config, [f"tokenizer.model={args.data / 'spm.model'}"])
    tok = Tokenizer.load(args.data / "spm.model")
    src = tok.src.encode((args.data / "train.raw.en").read_text(encoding="utf-8").splitlines())
    tgt = tok.tgt.encode((args.data / "train.raw.de").read_text(encoding="utf-8").splitlines())
    sp = tok.specials
    model = build_model(cfg.model, tok.src.vocab_size, tok.tgt.vocab_size, sp).train()
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    batches = iter(BatchSampler([len(s) for s in src], [len(t) for t in tgt], cfg.train.batch_tokens, cfg.seed))
    device = torch.device("cpu")
    probes = [matmul_gflops(args.precision, threads=2)]
    times, tokens, flops = [], [], []

    def train_step(batch: Batch) -> None:  # what Trainer._update does for one batch, without accumulation
        loss, _ = batch_loss(model, batch.src, batch.tgt_in, batch.tgt_out, sp.pad, cfg.train.label_smoothing,
                             device, args.precision, fused=not args.unfused)  # fmt: skip
        (loss / batch.tgt_tokens).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    for step in range(args.steps + 5):
        idx = next(batches)
        batch = make_batch([src[i] for i in idx], [tgt[i] for i in idx], sp)
        started = time.perf_counter()
        train_step(batch)
        if step >= 5:
            times.append(time.perf_counter() - started)
            tokens.append(batch.tgt_tokens)
            lengths = [(len(src[i]) + 1, len(tgt[i]) + 1) for i in idx]  # with </s> and <s>
            flops.append(training_flops(cfg.model, *zip(*lengths, strict=True), tok.tgt.vocab_size))
        if args.rss_every and step % args.rss_every == 0:
            print(json.dumps({"step": step, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
    probes.append(matmul_gflops(args.precision, threads=2))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile):
                idx = next(batches)
                train_step(make_batch([src[i] for i in idx], [tgt[i] for i in idx], sp))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30), file=sys.stderr)
    achieved = sum(flops) / sum(times) / 1e9
    print(
        json.dumps(
            {
                "precision": args.precision,
                "steps": args.steps,
                "tgt_tok_s": round(sum(tokens) / sum(times), 1),
                "median_step_ms": round(statistics.median(times) * 1000, 1),
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                "achieved_gflops": round(achieved, 1),
                "probe_gflops": [round(p, 1) for p in probes],
                "of_probe": round(achieved / max(probes), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
