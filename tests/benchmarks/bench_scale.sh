#!/usr/bin/env bash
# Corpora larger than RAM: cache build + 500 training steps of the benchmark Transformer on 1M and 5M pairs, with
# the peak RSS of the whole `seqtool train` process (it must stay < 2 GB and not grow with the corpus).
#   bash tests/benchmarks/bench_scale.sh                 # PAIRS="1000000 5000000" STEPS=500 WORK=/tmp/seqtool-scale
#   PRECISION=bf16 ...                                   # train.precision of the runs (default fp32)
# Prints one JSON line per corpus size: pairs, cache build pairs/s and size (bench_cache.py), training wall time
# and peak RSS (/usr/bin/time), and the steps done; "sampled" holds the peaks of RssAnon (heap) and RssFile (mapped
# files) read from /proc every 0.2 s (rss_sampler.py). Needs about 2 GB of disk per million pairs (corpus + cache).
set -euo pipefail
cd "$(dirname "$0")/../.."
PAIRS=${PAIRS:-"1000000 5000000"}
STEPS=${STEPS:-500}
PRECISION=${PRECISION:-fp32}
WORK=${WORK:-/tmp/seqtool-scale}
PY=.venv/bin/python
mkdir -p "$WORK"
# a joint 8k unigram tokenizer of the l10n corpus, trained once
if [ ! -f "$WORK/spm.model" ]; then
  .venv/bin/seqtool tokenizer train -i data/l10n-en-de/train.en -i data/l10n-en-de/train.de --vocab-size 8000 \
    -o "$WORK/spm" >&2
fi
for n in $PAIRS; do
  dir=$WORK/corpus-$n
  # 1) the synthetic corpus and a timed cache build in a separate process (kept for the training run)
  $PY tests/benchmarks/bench_cache.py --model "$WORK/spm.model" --pairs "$n" --work-dir "$dir" --keep \
    --out "$WORK/cache-$n.json" >&2
  src=$dir/corpus-$n-1.en; tgt=$dir/corpus-$n-1.de
  # 2) training from that corpus, with a fresh cache built by the trainer itself (RSS includes the build)
  rm -rf "$WORK/run-$n" "$WORK/run-$n-cache"
  /usr/bin/time -f '%M %e' -o "$WORK/time-$n-$PRECISION.txt" .venv/bin/seqtool train recipes/bench-wesnoth.yaml \
    --run-dir "$WORK/run-$n" --set "data.train_src=$src" --set "data.train_tgt=$tgt" \
    --set "tokenizer.model=$WORK/spm.model" --set "train.max_steps=$STEPS" --set "train.precision=$PRECISION" \
    --set "data.cache_dir=$WORK/run-$n-cache" >&2 &
  train_pid=$!
  # heap (RssAnon) and mapped files (RssFile) apart, sampled from /proc while it runs
  $PY tests/benchmarks/rss_sampler.py --pid "$train_pid" --out "$WORK/rss-$n-$PRECISION.json" &
  sampler_pid=$!
  wait "$train_pid"
  wait "$sampler_pid"
  read -r rss_kb wall < "$WORK/time-$n-$PRECISION.txt"
  $PY - "$n" "$WORK/cache-$n.json" "$rss_kb" "$wall" "$WORK/run-$n" "$PRECISION" "$WORK/rss-$n-$PRECISION.json" <<'PY'
import json, sys
n, cache_json, rss_kb, wall, run, precision, rss_json = sys.argv[1:]
cache = json.load(open(cache_json))
steps = [json.loads(l)["step"] for l in open(f"{run}/metrics.jsonl") if '"train"' in l]
print(json.dumps({"pairs": int(n), "precision": precision, "cache_build_pairs_s": cache["pairs_per_s"], "cache_mb": round(cache["cache_bytes"] / 1e6, 1),
                  "train_peak_rss_mb": round(int(rss_kb) / 1024), "train_wall_s": float(wall),
                  "steps": steps[-1] if steps else 0, "sampled": json.load(open(rss_json))}))
PY
done
