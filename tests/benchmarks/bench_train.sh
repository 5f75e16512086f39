#!/usr/bin/env bash
# Training throughput of seqtool beside the peers, with ../shared/bench's harness (same data, tokenizer, model, timer).
#   MODE=speed BUDGET_MIN=5 bash tests/benchmarks/bench_train.sh            # seqtool fp32 and bf16 rows
#   PEERS=1 MODE=speed bash tests/benchmarks/bench_train.sh                  # also (re)train the peers first
# Writes $RESULTS/seqtool-{fp32,bf16}.train{,.time}.json and prints the harness's summary table.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BENCH:-../shared/bench}
export MODE=${MODE:-speed} PEERS_HOME=${PEERS_HOME:-$HOME/.cache/seqtool-peers}
BUDGET_MIN=${BUDGET_MIN:-$([ "$MODE" = speed ] && echo 5 || echo 20)}
export BUDGET_MIN
RUNS=${RUNS:-$PEERS_HOME/runs}; RESULTS=${RESULTS:-$RUNS/results}; D=$RUNS/data
SEQTOOL=${SEQTOOL:-$PWD/.venv/bin/seqtool}
PRECISIONS=${PRECISIONS:-fp32 bf16}
budget_s=$(python3 -c "print(int(float('$BUDGET_MIN') * 60))")

bash "$B/setup.sh"
if [ "${PEERS:-0}" = 1 ]; then bash "$B/peers.sh" prep joey eole; else bash "$B/peers.sh" prep; fi
for precision in $PRECISIONS; do
  name=seqtool-$precision
  run=runs/bench-$precision
  rm -rf "$run"
  .venv/bin/python "$B/bench_lib.py" cpu-probe --threads 2 > "$RESULTS/cpu_probe.$name.train.json"  # host speed beside it
  bash "$B/peers.sh" measure "$name.train" --timeout "$budget_s" --stdout "$RESULTS/$name.train.log" --stderr stdout -- \
    "$SEQTOOL" train recipes/bench-wesnoth.yaml --run-dir "$run" \
      --set "data.train_src=$D/train.raw.en" --set "data.train_tgt=$D/train.raw.de" \
      --set "tokenizer.model=$D/spm.model" --set "train.precision=$precision" || true
  .venv/bin/python tests/benchmarks/train_json.py "$run" "$RESULTS/$name.train.json" --mode "$MODE" --budget-s "$budget_s"
done
bash "$B/peers.sh" summary
