"""Sample a running process's resident memory apart into anonymous and file-backed pages (Linux).

/usr/bin/time gives only the peak of the sum; this tells heap growth (RssAnon: tensors, numpy arrays, Python
objects) from mapped files that the kernel may drop (RssFile: the corpus cache's memory maps, shared libraries).

Usage (bench_scale.sh): start the command in the background, then

    .venv/bin/python tests/benchmarks/rss_sampler.py --pid PID --out rss.json

PID may be /usr/bin/time's: each sample is of the descendant with the largest VmRSS. It samples every --interval
seconds until the process exits, then writes one JSON object: the peak of each of VmRSS, RssAnon, RssFile and
RssShmem (MB), the RssAnon and RssFile at the moment of peak VmRSS, and the number of samples.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def descendants(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc's children lists."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            todo += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            continue
    return found


def memory_of(pid: int) -> dict[str, int] | None:
    """The FIELDS of /proc/PID/status in kB, or None when the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in FIELDS:
            values[key] = int(rest.split()[0])
    return values if len(values) == len(FIELDS) else None


def sample(pid: int, interval: float) -> dict[str, float]:
    """Sample until `pid` exits; the peaks in MB."""
    peaks = dict.fromkeys(FIELDS, 0)
    at_peak = {"RssAnon": 0, "RssFile": 0}
    samples = 0
    while Path(f"/proc/{pid}").exists():
        # the largest descendant: multiprocessing's resource tracker outlives the encoding workers, so the
        # newest child is not the trainer
        measured = [m for m in map(memory_of, descendants(pid)) if m is not None]
        memory = max(measured, key=lambda m: m["VmRSS"]) if measured else None
        if memory is not None:
            samples += 1
            if memory["VmRSS"] > peaks["VmRSS"]:
                at_peak = {"RssAnon": memory["RssAnon"], "RssFile": memory["RssFile"]}
            for key in FIELDS:
                peaks[key] = max(peaks[key], memory[key])
        time.sleep(interval)
    result: dict[str, float] = {f"peak_{key}_mb": round(value / 1024, 1) for key, value in peaks.items()}
    result.update({f"{key}_at_peak_rss_mb": round(value / 1024, 1) for key, value in at_peak.items()})
    result["samples"] = samples
    return result


def main() -> None:
    """Parse the arguments, sample, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    args = parser.parse_args()
    args.out.write_text(json.dumps(sample(args.pid, args.interval)) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
