"""Sweep training configs under one wall-clock budget, one run at a time, through the real CLI (issue 18).

  python tests/benchmarks/sweep.py recipes/wesnoth-en-fr/transformer.yaml --minutes 5 --out runs/sweep/vocab \\
      --grid tokenizer.vocab_size=1000,2000,4000,8000 --grid model.dropout=0.1,0.3

Each point of the grid (every combination, or with `--vary one` each key alone beside one unchanged baseline; times
each of `--seeds`) is one run: a fp32 matmul probe, `seqtool train CONFIG --set KEY=VALUE ... --set
train.max_minutes=M`, `seqtool translate` of each dev set (beam from the config, or --beam) and `seqtool eval`
(BLEU, chrF2), then the probe again. Each run appends one JSON line to OUT/results.jsonl: the overrides, seed,
updates, training minutes and wall seconds, median target tok/s, achieved matmul GFLOP/s, the probes, dev BLEU and
chrF2 of best.pt (and its dev BLEU at each of --length-penalties), the best greedy dev BLEU logged during training.
A point already in results.jsonl is skipped, so an interrupted sweep continues where it stopped. The summary table
(OUT/summary.md, also printed) gives each point's mean over its seeds and its difference to the baseline (the first
point, or the unchanged config with --vary one).

Decide on dev sets only: the sweep never reads a test set. Compare rows of one sitting only (the host's speed
swings; the probe columns show it). When a tokenizer key varies, each run trains its own tokenizer in its run
directory (tokenizer.model and friends are cleared unless --set gives them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from seqtool.config import load_config, parse_overrides
from seqtool.errors import SeqtoolError
from seqtool.probe import matmul_gflops

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.src_model", "tokenizer.tgt_model")


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`KEY=V1,V2,...` strings -> {KEY: [V1, V2, ...]} (values stay YAML text; lists need brackets: [0.9,0.98])."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise SystemExit(f"sweep: --grid {item!r}: expected KEY=V1,V2,..., e.g. model.dropout=0.1,0.3")
        parts = re.split(r",(?![^\[]*\])", values)  # commas inside [...] belong to a list value
        grid[key.strip()] = [p.strip() for p in parts if p.strip()]
    return grid


def grid_points(grid: dict[str, list[str]], vary: str) -> list[dict[str, str]]:
    """The overrides of every run: all combinations (`all`), or the baseline then each value of each key (`one`)."""
    if vary == "all":
        return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    points: list[dict[str, str]] = [{}]
    for key, values in grid.items():
        points += [{key: value} for value in values]
    return points


def point_name(overrides: dict[str, str], seed: int) -> str:
    """A run directory name from the overrides: `dropout=0.3.vocab_size=1000.seed=42` (`baseline.seed=42`)."""
    parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in overrides.items()]
    name = ".".join(parts) or "baseline"
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", f"{name}.seed={seed}")


def run_cli(*args: str, log: Path | None = None) -> str:
    """Run `seqtool ARGS` in a fresh process; stdout, or exit with its last stderr line when it fails."""
    proc = subprocess.run([sys.executable, "-m", "seqtool", *args], capture_output=True, text=True)
    if log is not None:
        log.write_text(proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SystemExit(f"sweep: seqtool {args[0]} failed (exit {proc.returncode}): {last}")
    return proc.stdout


def train_summary(run_dir: Path) -> dict[str, Any]:
    """Updates, training minutes, median tok/s and GFLOP/s (first log interval left out), best greedy dev BLEU."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    steady = train[1:] or train
    return {
        "updates": train[-1]["step"] if train else 0,
        "train_minutes": round(train[-1]["elapsed_s"] / 60, 2) if train else 0.0,
        "tgt_tok_s": round(statistics.median(r["tgt_tok_s"] for r in steady), 1) if steady else 0.0,
        "gflops": round(statistics.median(r["gflops"] for r in steady if r.get("gflops")), 1)
        if any(r.get("gflops") for r in steady)
        else None,
        "greedy_dev_bleu": round(max(r["dev_bleu"] for r in evals), 2) if evals else None,
    }


def score_dev(
    config: Path, sets: list[str], run_dir: Path, beam: int | None, length_penalty: str | None = None
) -> dict[str, float]:
    """BLEU and chrF2 of best.pt on each dev set (`dev_bleu`/`dev_chrf`: their mean; per set with several), with the
    config's length penalty or the one given."""
    cfg = load_config(config, sets)
    scores: dict[str, float] = {}
    bleus, chrfs = [], []
    for dev in cfg.data.dev_sets():
        hyp = run_dir / f"dev.{dev.name}{f'.lp{length_penalty}' if length_penalty else ''}.hyp"
        args = ["translate", str(run_dir), "-i", dev.src, "-o", str(hyp), "--overwrite"]
        args += ["--beam", str(beam)] if beam else []
        args += ["--length-penalty", length_penalty] if length_penalty else []
        args += ["--tgt-lang", dev.tgt_lang] if dev.tgt_lang else []
        run_cli(*args)
        result = json.loads(run_cli("eval", "--hyp", str(hyp), "--ref", dev.tgt, "--metrics", "bleu,chrf", "--json"))
        bleus.append(result["BLEU"]["score"])
        chrfs.append(result["chrF2"]["score"])
        if len(cfg.data.dev_sets()) > 1:
            scores[f"dev_bleu.{dev.name}"], scores[f"dev_chrf.{dev.name}"] = round(bleus[-1], 2), round(chrfs[-1], 2)
    return {"dev_bleu": round(statistics.mean(bleus), 2), "dev_chrf": round(statistics.mean(chrfs), 2), **scores}


def run_point(args: argparse.Namespace, overrides: dict[str, str], seed: int) -> dict[str, Any]:
    """Train and score one point; its JSON record."""
    name = point_name(overrides, seed)
    run_dir = args.out / name
    sets = [*args.set, *(f"{k}={v}" for k, v in overrides.items()), f"seed={seed}", f"train.max_minutes={args.minutes}"]
    if any(k.startswith("tokenizer.") for k in overrides):
        given = {key for key, _ in parse_overrides(args.set)}
        sets = [f"{key}=" for key in TOKENIZER_FILES if key not in given] + sets
    load_config(args.config, sets)  # a bad key or value stops the sweep before any training
    probe_before = matmul_gflops("fp32", args.threads)
    started = time.perf_counter()
    train_args = ["train", str(args.config), "--run-dir", str(run_dir), "--overwrite"]
    run_cli(*train_args, *(a for s in sets for a in ("--set", s)), log=args.out / f"{name}.train.log")
    wall = time.perf_counter() - started
    record: dict[str, Any] = {"name": name, "overrides": overrides, "seed": seed, "minutes": args.minutes}
    record |= train_summary(run_dir) | {"wall_s": round(wall, 1)}
    record |= score_dev(args.config, sets, run_dir, args.beam)
    if args.length_penalties:  # the same checkpoint at other length penalties: dev BLEU of each
        record["dev_bleu_by_length_penalty"] = {
            lp: score_dev(args.config, sets, run_dir, args.beam, lp)["dev_bleu"] for lp in args.length_penalties
        }
    record["probe_fp32_gflops"] = [round(probe_before), round(matmul_gflops("fp32", args.threads))]
    return record


def summary_table(records: list[dict[str, Any]], points: list[dict[str, str]]) -> str:
    """Markdown: one row per point in grid order (mean over its seeds), dev BLEU/chrF2, Δ BLEU to the first point."""
    by_point: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_point.setdefault(json.dumps(r["overrides"], sort_keys=True), []).append(r)
    lines = [
        "| overrides | seeds | updates | tgt tok/s | dev BLEU | Δ BLEU | dev chrF2 | greedy dev BLEU (training) "
        "| probe fp32 GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base_bleu = None
    for overrides in points:
        runs = by_point.get(json.dumps(overrides, sort_keys=True))
        if not runs:
            continue
        bleu = statistics.mean(r["dev_bleu"] for r in runs)
        base_bleu = bleu if base_bleu is None else base_bleu
        probes = [p for r in runs for p in r["probe_fp32_gflops"]]
        lines.append(
            f"| {', '.join(f'{k}={v}' for k, v in overrides.items()) or '(the config)'} "
            f"| {', '.join(str(r['seed']) for r in runs)} | {statistics.mean(r['updates'] for r in runs):,.0f} "
            f"| {statistics.mean(r['tgt_tok_s'] for r in runs):,.0f} | {bleu:.2f} | {bleu - base_bleu:+.2f} "
            f"| {statistics.mean(r['dev_chrf'] for r in runs):.2f} "
            f"| {' / '.join(str(r['greedy_dev_bleu']) for r in runs)} | {min(probes)}–{max(probes)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse the arguments, run the points not yet in results.jsonl, print the summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path, help="the YAML config every run starts from")
    ap.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... (repeatable)")
    ap.add_argument("--vary", choices=("all", "one"), default="all", help="all combinations, or one key at a time")
    ap.add_argument("--seeds", default="42", help="comma-separated seeds; each point runs once per seed")
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget of every run (train.max_minutes)")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run (repeatable)")
    ap.add_argument("--beam", type=int, default=None, help="beam for the dev scores (default: the config's)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the matmul probe")
    ap.add_argument("--length-penalties", type=lambda t: [v.strip() for v in t.split(",") if v.strip()], default=[],
                    help="also score each run's dev sets at these length penalties, e.g. 0.6,1.0,1.4")  # fmt: skip
    ap.add_argument("--out", type=Path, required=True, help="directory for the runs, results.jsonl and summary.md")
    ap.add_argument("--dry-run", action="store_true", help="print the runs' names and overrides, run nothing")
    args = ap.parse_args()
    grid = parse_grid(args.grid)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    points = grid_points(grid, args.vary)
    try:
        for overrides in points:  # every point's config is valid before the first run starts
            load_config(args.config, [*args.set, *(f"{k}={v}" for k, v in overrides.items())])
    except SeqtoolError as exc:
        raise SystemExit(f"sweep: {exc}") from None
    if args.dry_run:
        for overrides, seed in itertools.product(points, seeds):
            print(point_name(overrides, seed), json.dumps(overrides))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    finished = {r["name"] for r in done}
    todo = [(o, s) for o, s in itertools.product(points, seeds) if point_name(o, s) not in finished]
    for index, (overrides, seed) in enumerate(todo, 1):
        print(f"[{index}/{len(todo)}] {point_name(overrides, seed)}", file=sys.stderr, flush=True)
        record = run_point(args, overrides, seed)
        with open(results, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        done.append(record)
        print(f"  dev BLEU {record['dev_bleu']}, chrF2 {record['dev_chrf']}, {record['updates']} updates",
              file=sys.stderr, flush=True)  # fmt: skip
    wanted = {point_name(o, s) for o, s in itertools.product(points, seeds)}
    table = summary_table([r for r in done if r["name"] in wanted], points)
    (args.out / "summary.md").write_text(table, encoding="utf-8")
    print(table, end="")


if __name__ == "__main__":
    main()
