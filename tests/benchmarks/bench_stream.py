"""Continuous batching against rounds, in process (no HTTP): one thread, beam 5, the same sentences.

    .venv/bin/python tests/benchmarks/bench_stream.py RUN INPUT [--lines 200] [--live 16] [--admit-at 1]

First offline `translate` (sorted 4,000-token batches), then a `TranslationStream` kept at `--live` sentences in
flight, new ones admitted whenever at least `--admit-at` places are free (`--admit-at` = `--live`: rounds that run
until all their sentences end). Prints sentences/s, the share of offline, and the time per decoder row and step.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from pathlib import Path

import torch

from seqtool.decode import DecodeOptions, load_translator
from seqtool.decode.search import SearchConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("input")
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--live", type=int, default=16)
    parser.add_argument("--admit-at", type=int, default=1)
    args = parser.parse_args()
    lines = Path(args.input).read_text(encoding="utf-8").splitlines()[: args.lines]
    translator = load_translator(args.run, DecodeOptions(threads=1, workers=1, quantize="none"))
    torch.set_num_threads(1)
    cfg = SearchConfig.from_decode(translator.config.decode, beam=5)
    started = time.perf_counter()
    translator.translate(lines, cfg, batch_tokens=4000)
    offline = time.perf_counter() - started

    stream = translator.stream(cfg, translator.config.decode.max_input_len)
    assert stream is not None
    waiting = deque(range(len(lines)))
    live = steps = rows = 0
    step_seconds = 0.0
    started = time.perf_counter()
    while True:
        free = args.live - live
        if waiting and (live == 0 or free >= args.admit_at):
            taken = [waiting.popleft() for _ in range(min(free, len(waiting)))]
            stream.admit([lines[i] for i in taken], taken)
            live += len(taken)
        if not stream.live:
            break
        tick = time.perf_counter()
        live -= len(stream.step())
        step_seconds += time.perf_counter() - tick
        steps += 1
        rows += stream.searcher.rows()
    seconds = time.perf_counter() - started
    print(
        f"offline {len(lines) / offline:.1f} sent/s; stream of {args.live}, admitting at {args.admit_at} free: "
        f"{len(lines) / seconds:.1f} sent/s ({offline / seconds:.2f} of offline), {steps} steps, "
        f"{rows / steps:.0f} rows a step, {step_seconds / rows * 1000:.2f} ms per row-step"
    )


if __name__ == "__main__":
    main()
