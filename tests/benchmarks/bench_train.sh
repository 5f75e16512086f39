#!/usr/bin/env bash
# seqtool beside the peers with ../shared/bench's harness (same data, tokenizer, model size, timer and scorer).
#   MODE=speed bash tests/benchmarks/bench_train.sh            # training throughput, 5 min per row
#   MODE=quality bash tests/benchmarks/bench_train.sh          # 20 min per row, then beam 5 and beam 1 on the test set
#   PEERS=1 ... bash tests/benchmarks/bench_train.sh           # also (re)run the peers first (JoeyNMT, Eole; quality: + CTranslate2)
#   ROWS="seqtool-gru:recipes/bench-wesnoth-gru.yaml:bf16" ...  # which seqtool rows: name:config:precision, space-separated
# Writes $RESULTS/NAME.* in the harness's JSON format and prints its summary table (all toolkits side by side).
set -euo pipefail
# The budget ends each training with SIGINT. A job started in the background of a non-interactive shell (`cmd &`,
# nohup) inherits SIGINT as ignored, which a shell cannot undo and Python keeps (JoeyNMT would never stop): restart
# this script with SIGINT and SIGQUIT restored to their defaults.
if ! python3 -c 'import signal, sys; sys.exit(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)'; then
  exec python3 -c 'import os, signal, sys
for s in (signal.SIGINT, signal.SIGQUIT): signal.signal(s, signal.SIG_DFL)
os.execvp("bash", ["bash", *sys.argv[1:]])' "$0" "$@"
fi
cd "$(dirname "$0")/../.."
B=${BENCH:-../shared/bench}
export MODE=${MODE:-speed} PEERS_HOME=${PEERS_HOME:-$HOME/.cache/seqtool-peers}
BUDGET_MIN=${BUDGET_MIN:-$([ "$MODE" = speed ] && echo 5 || echo 20)}
export BUDGET_MIN
RUNS=${RUNS:-$PEERS_HOME/runs}; RESULTS=${RESULTS:-$RUNS/results}; D=$RUNS/data
SEQTOOL=${SEQTOOL:-$PWD/.venv/bin/seqtool}
if [ "$MODE" = speed ]; then
  ROWS=${ROWS:-"seqtool-fp32:recipes/bench-wesnoth.yaml:fp32 seqtool-bf16:recipes/bench-wesnoth.yaml:bf16"}
else
  ROWS=${ROWS:-"seqtool-bf16:recipes/bench-wesnoth.yaml:bf16"}
fi
budget_s=$(python3 -c "print(int(float('$BUDGET_MIN') * 60))")
# quality: seqtool stops itself 90 s before the harness's SIGINT, leaving time for the final validation and the
# checkpoint averaging; the whole process still counts against the budget.
own_minutes=$(python3 -c "print(max(float('$BUDGET_MIN') - 1.5, 0.5))")

bash "$B/setup.sh"
if [ "${PEERS:-0}" = 1 ]; then
  if [ "$MODE" = speed ]; then bash "$B/peers.sh" prep joey eole; else bash "$B/peers.sh" prep joey eole ct2; fi
else
  # the peers' models were trained on this very tokenizer: keep it (prep trains a new one)
  [ -f "$D/test.raw.en" ] || bash "$B/peers.sh" prep
fi
bf16_probe() { .venv/bin/python -c 'from seqtool.probe import matmul_gflops; print(round(matmul_gflops("bf16", 2), 1))'; }
for row in $ROWS; do
  IFS=: read -r name config precision <<< "$row"
  run=runs/bench-$name
  rm -rf "$run"
  extra=()
  if [ "$MODE" = quality ]; then
    extra=(--set "data.dev_src=$D/dev.raw.en" --set "data.dev_tgt=$D/dev.raw.de" --set "train.max_minutes=$own_minutes"
           --set train.eval_every=400 --set train.save_every=100 --set train.keep_last=5 --set train.average_last=5)
  fi
  .venv/bin/python "$B/bench_lib.py" cpu-probe --threads 2 > "$RESULTS/cpu_probe.$name.train.json"  # host speed beside it
  probes=("$(bf16_probe)")  # the bf16 ceiling beside the run, before and after: train_json.py reports its fraction
  bash "$B/peers.sh" measure "$name.train" --timeout "$budget_s" --stdout "$RESULTS/$name.train.log" --stderr stdout -- \
    "$SEQTOOL" train "$config" --run-dir "$run" \
      --set "data.train_src=$D/train.raw.en" --set "data.train_tgt=$D/train.raw.de" \
      --set "tokenizer.model=$D/spm.model" --set "train.precision=$precision" "${extra[@]}" || true
  probes+=("$(bf16_probe)")
  .venv/bin/python tests/benchmarks/train_json.py "$run" "$RESULTS/$name.train.json" --mode "$MODE" --budget-s "$budget_s" \
    --bf16-probe "${probes[@]}"
  if [ "$MODE" = quality ]; then
    for beam in 5 1; do
      .venv/bin/python "$B/bench_lib.py" cpu-probe --threads 2 > "$RESULTS/cpu_probe.$name.beam$beam.json"
      bash "$B/peers.sh" measure "$name.beam$beam" --repeat 2 --stdin "$D/test.raw.en" \
        --stdout "$RESULTS/$name.beam$beam.hyp" -- "$SEQTOOL" translate "$run" --beam "$beam" --threads 2
      bash "$B/peers.sh" score "$name.beam$beam" "$RESULTS/$name.beam$beam.hyp"
    done
  fi
done
bash "$B/peers.sh" summary
