#!/usr/bin/env bash
# Decoding speed beside JoeyNMT, Eole and CTranslate2 with ../shared/bench's harness (same test set, beams, threads,
# timer and scorer), for one trained seqtool run and each of seqtool's decoding paths:
#   RUN=runs/bench-seqtool-bf16 bash tests/benchmarks/bench_translate.sh      (make bench-translate)
#   PEERS=1 ...   first re-decode the peers' models trained by `MODE=quality bench_train.sh` / `peers.sh` (Eole and
#                 CTranslate2, so that they run in the same sitting; PEERS=joey adds JoeyNMT's slow decoding)
#   VARIANTS="torch serial int8 bf16 ct2-int8 ct2-fp32 ct2own-int8"   which rows (default: all); BEAMS="5 1";
#   NAME=seqtool
# Rows: NAME-<variant>.beamN.{time,score,count}.json in $RESULTS; then the harness's summary table.
#   torch     seqtool translate (PyTorch, fp32; by default one batch per thread at once)
#   serial    + --workers 1 (one batch at a time, every thread on it)
#   int8      + --quantize int8 (dynamic, Linear layers)   bf16      + --precision bf16 (AMX/AVX-512-bf16)
#   ct2-int8  seqtool export --quantization int8, then seqtool translate --engine ctranslate2
#   ct2-fp32  the same with float32 weights
#   ct2own-int8  CTranslate2's own decoding of that int8 export, by the harness's code (as for Eole's model)
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BENCH:-../shared/bench}
export MODE=quality PEERS_HOME=${PEERS_HOME:-$HOME/.cache/seqtool-peers}
RUNS=${RUNS:-$PEERS_HOME/runs}; RESULTS=${RESULTS:-$RUNS/results}; D=$RUNS/data
RUN=${RUN:-runs/bench-seqtool-bf16}
NAME=${NAME:-seqtool}
VARIANTS=${VARIANTS:-"torch serial int8 bf16 ct2-int8 ct2-fp32 ct2own-int8"}
BEAMS=${BEAMS:-"5 1"}
SEQTOOL=${SEQTOOL:-$PWD/.venv/bin/seqtool}
PY=.venv/bin/python
[ -f "$RUN/config.yaml" ] || { echo "bench_translate: $RUN is not a trained run (MODE=quality bench_train.sh first)" >&2; exit 2; }
[ -f "$D/test.raw.en" ] || bash "$B/peers.sh" prep

case "${PEERS:-0}" in
  1) bash "$B/peers.sh" eole_decode ct2 ;;
  joey) bash "$B/peers.sh" joey_decode eole_decode ct2 ;;
esac

ct2_own() {  # beam: CTranslate2's own Python API on our int8 export, with the harness's settings for Eole's model
  local beam=$1 row=$NAME-ct2own-int8.beam$1
  [ -d "$RUN/ct2-int8" ] || "$SEQTOOL" export "$RUN" --format ctranslate2 --quantization int8 -o "$RUN/ct2-int8" >&2
  $PY "$B/bench_lib.py" cpu-probe --threads 2 > "$RESULTS/cpu_probe.$row.json"
  bash "$B/peers.sh" measure "$row" --repeat 2 --stdout "$RESULTS/$row.json" -- \
    $PY "$B/bench_lib.py" ct2 --model "$RUN/ct2-int8" --inp "$D/test.en" --out "$RESULTS/$row.sp" --beam "$beam" \
    --batch 32 --compute-type int8 --threads 2 --maxlen 202
  $PY "$B/bench_lib.py" detok --spm "$D/spm.model" --inp "$RESULTS/$row.sp" --out "$RESULTS/$row.hyp"
  bash "$B/peers.sh" score "$row" "$RESULTS/$row.hyp"
}

for variant in $VARIANTS; do
  opts=()
  case "$variant" in
    ct2own-int8) for beam in $BEAMS; do ct2_own "$beam"; done; continue ;;
    torch) ;;
    serial) opts=(--workers 1) ;;
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
