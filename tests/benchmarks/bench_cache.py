"""Benchmark the on-disk encoded corpus cache (seqtool.data.dataset) on a large synthetic corpus.

Makes an N-pair corpus from data/l10n-en-de/train.{en,de} repeated with seeded noise (word dropout and swaps of
neighbouring words, so that the pairs differ), builds the cache with a given SentencePiece model, reopens it (the
reuse path) and prints one JSON object: pairs/s of the build, cache size on disk, peak RSS of this process
(resource.getrusage; torch is imported first, as in the trainer; on Linux the peak is reset at the start of the
build, so peak_rss_mb is the build's own peak, to compare with rss_at_build_start_mb), peak RSS of the encoding
workers (VmHWM, Linux), and the filter report.

Usage (from the repository root):

    .venv/bin/python tests/benchmarks/bench_cache.py --model runs/NAME/spm.model --pairs 1000000 --workers 2
    .venv/bin/python tests/benchmarks/bench_cache.py --model spm.model --pairs 5000000 --work-dir /big/disk \\
        --out ../shared/bench/cache_5M.json

The corpus (about 70 bytes per pair and side) and the cache are written under --work-dir (default: a temporary
directory); both are removed at the end unless --keep. An existing corpus of the same size and seed is reused; the
cache is always built afresh.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from seqtool.data.dataset import open_or_build  # noqa: E402

BASE = REPO / "data" / "l10n-en-de"


def noisy(words: list[str], rng: random.Random, dropout: float, swap: float) -> str:
    """The words with each dropped with probability `dropout`, then one neighbouring pair swapped with `swap`."""
    kept = [w for w in words if rng.random() >= dropout] or words[:1]
    if len(kept) > 1 and rng.random() < swap:
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return " ".join(kept)


def make_corpus(src_out: Path, tgt_out: Path, pairs: int, seed: int, dropout: float, swap: float) -> None:
    """Write `pairs` noisy copies of the base corpus pairs (cycled), streaming."""
    src_lines = (BASE / "train.en").read_text(encoding="utf-8").splitlines()
    tgt_lines = (BASE / "train.de").read_text(encoding="utf-8").splitlines()
    rng = random.Random(seed)
    with open(src_out, "w", encoding="utf-8") as src, open(tgt_out, "w", encoding="utf-8") as tgt:
        for n in range(pairs):
            i = n % len(src_lines)
            first_pass = n < len(src_lines)  # the first copy unchanged, the later ones noisy
            s, t = src_lines[i], tgt_lines[i]
            if not first_pass:
                s, t = noisy(s.split(), rng, dropout, swap), noisy(t.split(), rng, dropout, swap)
            src.write(s + "\n")
            tgt.write(t + "\n")


class WorkerPeak:
    """A progress callback that records the peak RSS (VmHWM) of this process's children, the encoding workers.

    getrusage(RUSAGE_CHILDREN) cannot tell: Linux carries a forked child's pre-exec peak (this whole process) over
    the exec of a spawned worker. Linux only; stays 0 elsewhere.
    """

    def __init__(self) -> None:
        self.kb = 0
        self.pairs = 0

    def __call__(self, done: int) -> None:
        self.pairs = done
        pid = os.getpid()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return
        for child in children:
            try:
                status = Path(f"/proc/{child}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.kb = max(self.kb, int(line.split()[1]))


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux: write 5 to /proc/self/clear_refs); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def vm_kb(field: str) -> int:
    """A Vm* field of /proc/self/status in kB (0 where there is none)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith(field + ":")), 0)


def main() -> None:
    """Parse the arguments, make the corpus, build and reopen the cache, print the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="SentencePiece model (joint)")
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=None, help="encoding processes (default: one per core)")
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--max-ratio", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--swap", type=float, default=0.3)
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the corpus and the cache")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    # torch loaded first, as in the trainer, so that it is in the baseline RSS. Not at the top: the spawned encoding
    # workers import this script as their __main__ module and must not load torch.
    import seqtool.tokenizer  # noqa: F401

    temporary = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="bench-cache-")) if temporary else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    src, tgt = work / f"corpus-{args.pairs}-{args.seed}.en", work / f"corpus-{args.pairs}-{args.seed}.de"
    cache = work / "cache"
    try:
        start = time.perf_counter()
        if not (src.exists() and tgt.exists()):
            make_corpus(src, tgt, args.pairs, args.seed, args.dropout, args.swap)
        make_s = time.perf_counter() - start
        shutil.rmtree(cache, ignore_errors=True)
        rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_now_kb = vm_kb("VmRSS")
        can_reset = reset_peak_rss()

        workers_peak = WorkerPeak()
        start = time.perf_counter()
        corpus, report, built = open_or_build(
            cache, src, tgt, args.model, None, args.max_len, args.max_ratio, args.workers, workers_peak
        )
        build_s = time.perf_counter() - start
        rss_self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert built and workers_peak.pairs == args.pairs

        start = time.perf_counter()
        reopened, _, rebuilt = open_or_build(
            cache, src, tgt, args.model, None, args.max_len, args.max_ratio, args.workers
        )
        lengths = reopened.src_lengths, reopened.tgt_lengths
        reopen_s = time.perf_counter() - start
        assert not rebuilt and len(lengths[0]) == len(corpus)

        result = {
            "pairs": args.pairs,
            "workers": args.workers,
            "corpus_bytes": src.stat().st_size + tgt.stat().st_size,
            "make_corpus_s": round(make_s, 2),
            "build_s": round(build_s, 2),
            "pairs_per_s": round(args.pairs / build_s, 1),
            "reopen_with_lengths_s": round(reopen_s, 3),
            "cache_bytes": sum(p.stat().st_size for p in corpus.directory.iterdir()),
            "dtype": corpus.manifest["dtype"],
            "src_tokens": corpus.manifest["src_tokens"],
            "tgt_tokens": corpus.manifest["tgt_tokens"],
            "peak_rss_mb": round(rss_self_kb / 1024, 1),
            "peak_rss_is_build_only": can_reset,
            "peak_rss_before_build_mb": round(rss_before_kb / 1024, 1),
            "rss_at_build_start_mb": round(rss_now_kb / 1024, 1),
            "peak_rss_worker_mb": round(workers_peak.kb / 1024, 1),
            "report": report.summary(),
        }
    finally:
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
            src.unlink(missing_ok=True)
            tgt.unlink(missing_ok=True)
            if temporary:
                shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
