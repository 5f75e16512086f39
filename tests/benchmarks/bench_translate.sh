#!/usr/bin/env bash
# Decoding speed beside JoeyNMT, Eole and CTranslate2 with ../shared/bench's harness (same test set, beams, threads,
# timer and scorer), for one trained seqtool run and each of seqtool's decoding paths:
#   RUN=runs/bench-seqtool-bf16 bash tests/benchmarks/bench_translate.sh      (make bench-translate)
#   PEERS=1 ...   first re-decode the peers' models trained by `MODE=quality bench_train.sh` / `peers.sh` (Eole and
#                 CTranslate2, so that they run in the same sitting; PEERS=joey adds JoeyNMT's slow decoding)
#   VARIANTS="torch int8 bf16 ct2-int8 ct2-fp32"   which rows (default: all); BEAMS="5 1"; NAME=seqtool
# Rows: NAME-<variant>.beamN.{time,score,count}.json in $RESULTS; then the harness's summary table.
#   torch     seqtool translate (PyTorch, fp32)            int8      + --quantize int8 (dynamic, Linear layers)
#   bf16      + --precision bf16 (AMX/AVX-512-bf16)        ct2-int8  seqtool export --quantization int8, then
#   ct2-fp32  the same with float32 weights                           seqtool translate --engine ctranslate2
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BENCH:-../shared/bench}
export MODE=quality PEERS_HOME=${PEERS_HOME:-$HOME/.cache/seqtool-peers}
RUNS=${RUNS:-$PEERS_HOME/runs}; RESULTS=${RESULTS:-$RUNS/results}; D=$RUNS/data
RUN=${RUN:-runs/bench-seqtool-bf16}
NAME=${NAME:-seqtool}
VARIANTS=${VARIANTS:-"torch int8 bf16 ct2-int8 ct2-fp32"}
BEAMS=${BEAMS:-"5 1"}
SEQTOOL=${SEQTOOL:-$PWD/.venv/bin/seqtool}
PY=.venv/bin/python
[ -f "$RUN/config.yaml" ] || { echo "bench_translate: $RUN is not a trained run (MODE=quality bench_train.sh first)" >&2; exit 2; }
[ -f "$D/test.raw.en" ] || bash "$B/peers.sh" prep

case "${PEERS:-0}" in
  1) bash "$B/peers.sh" eole_decode ct2 ;;
  joey) bash "$B/peers.sh" joey_decode eole_decode ct2 ;;
esac

for variant in $VARIANTS; do
  opts=()
  case "$variant" in
    torch) ;;
    int8) opts=(--quantize int8) ;;
    bf16) opts=(--precision bf16) ;;
    ct2-int8|ct2-fp32)
      quant=$([ "$variant" = ct2-int8 ] && echo int8 || echo float32)
      "$SEQTOOL" export "$RUN" --format ctranslate2 --quantization "$quant" -o "$RUN/$variant" --overwrite >&2
      opts=(--engine ctranslate2 --ct2-model "$RUN/$variant") ;;
    *) echo "bench_translate: unknown variant $variant" >&2; exit 2 ;;
  esac
  for beam in $BEAMS; do
    row=$NAME-$variant.beam$beam
    $PY "$B/bench_lib.py" cpu-probe --threads 2 > "$RESULTS/cpu_probe.$row.json"
    bash "$B/peers.sh" measure "$row" --repeat 2 --stdin "$D/test.raw.en" --stdout "$RESULTS/$row.hyp" -- \
      "$SEQTOOL" translate "$RUN" --beam "$beam" --threads 2 "${opts[@]}"
    bash "$B/peers.sh" score "$row" "$RESULTS/$row.hyp"
  done
done
bash "$B/peers.sh" summary
