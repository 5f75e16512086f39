"""Load a running `seqtool serve` with C concurrent clients, each sending one sentence per request (loopback only).

    .venv/bin/python tests/benchmarks/load_serve.py --url http://127.0.0.1:8090 --input test.en --clients 32 \
        --out load.c32.json [--hyp out.txt] [--beam 5] [--timeout 600]

Every line of --input is sent exactly once (the clients take the next line as they finish the last), so the run is
bounded in count; the whole run is bounded in time by --timeout. Writes one JSON object: clients, requests,
failures, seconds, sentences/s, and p50/p95/p99/max latency in ms; --hyp writes the translations in input order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of `values` (share in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


async def run(url: str, lines: list[str], clients: int, beam: int | None, timeout: float) -> dict:
    """Send every line once with `clients` concurrent clients; latencies and outputs in input order."""
    assert url.startswith(("http://127.", "http://localhost", "http://[::1]")), "loopback only"
    outputs: list[str | None] = [None] * len(lines)
    latencies: list[float] = []
    failures: list[str] = []
    next_line = iter(range(len(lines)))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            for i in next_line:
                body: dict = {"text": [lines[i]]}
                if beam is not None:
                    body["beam"] = beam
                started = time.perf_counter()
                try:
                    answer = await client.post("/v1/translate", json=body)
                except httpx.HTTPError as exc:
                    failures.append(f"line {i + 1}: {type(exc).__name__}")
                    continue
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    failures.append(f"line {i + 1}: HTTP {answer.status_code} {answer.text[:200]}")
                    continue
                outputs[i] = answer.json()["translations"][0]["text"]

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(clients))), timeout)
        seconds = time.perf_counter() - started
    ms = [x * 1000 for x in latencies]
    return {
        "clients": clients,
        "requests": len(lines),
        "failures": len(failures),
        "failure_examples": failures[:5],
        "seconds": round(seconds, 3),
        "sent_per_s": round(len(lines) / seconds, 2),
        "p50_ms": round(statistics.median(ms), 1) if ms else None,
        "p95_ms": round(percentile(ms, 0.95), 1) if ms else None,
        "p99_ms": round(percentile(ms, 0.99), 1) if ms else None,
        "max_ms": round(max(ms), 1) if ms else None,
        "outputs": outputs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hyp", type=Path)
    parser.add_argument("--beam", type=int)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    lines = args.input.read_text(encoding="utf-8").splitlines()
    result = asyncio.run(run(args.url, lines, args.clients, args.beam, args.timeout))
    outputs = result.pop("outputs")
    if args.hyp:
        args.hyp.write_text("".join((o or "") + "\n" for o in outputs), encoding="utf-8")
    args.out.write_text(json.dumps(result) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
