#!/usr/bin/env bash
# Decoding speed beside JoeyNMT, Eole and CTranslate2 with ../shared/bench's harness (same test set, beams, threads,
# timer and scorer), for one trained seqtool run and each of seqtool's decoding paths:
#   RUN=runs/bench-seqtool-bf16 bash tests/benchmarks/bench_translate.sh      (make bench-translate)
#   PEERS=1 ...   first re-decode the peers' models trained by `MODE=quality bench_train.sh` / `peers.sh` (Eole and
#                 CTranslate2, so that they run in the same sitting; PEERS=joey adds JoeyNMT's slow decoding)
#   PEERS=joey-greedy   only JoeyNMT's greedy decoding of its model (its beam 5 alone takes about 30 minutes here)
#   VARIANTS="default torch serial int8 bf16 ct2-int8 ct2-fp32 ct2own-int8 eole-same"   which rows (default: all);
#   BEAMS="5 1";
#   NAME=seqtool
# Rows: NAME-<variant>.beamN.{time,score,count}.json in $RESULTS; then the harness's summary table.
#   default   seqtool translate as it comes (a Transformer on the CPU: int8, one batch per thread at once)
#   torch     + --quantize none (the PyTorch path in fp32)
#   serial    + --workers 1 (one batch at a time, every thread on it)
#   int8      + --quantize int8 (int8 Linear layers, per-token scales)
#   bf16      + --precision bf16 (AMX/AVX-512-bf16; no int8)
#   ct2-int8  seqtool export --quantization int8, then seqtool translate --engine ctranslate2
#   ct2-fp32  the same with float32 weights
#   ct2own-int8  CTranslate2's own decoding of that int8 export, by the harness's code (as for Eole's model)
#   eole-same Eole's own decoding of our weights (tests/benchmarks/to_eole.py), with the harness's Eole settings:
#             a decoder against a decoder on one model, where the peers' own models write output of another length
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BENCH:-../shared/bench}
export MODE=quality PEERS_HOME=${PEERS_HOME:-$HOME/.cache/seqtool-peers}
RUNS=${RUNS:-$PEERS_HOME/runs}; RESULTS=${RESULTS:-$RUNS/results}; D=$RUNS/data
RUN=${RUN:-runs/bench-seqtool-bf16}
NAME=${NAME:-seqtool}
VARIANTS=${VARIANTS:-"default torch serial int8 bf16 ct2-int8 ct2-fp32 ct2own-int8 eole-same"}
BEAMS=${BEAMS:-"5 1"}
SEQTOOL=${SEQTOOL:-$PWD/.venv/bin/seqtool}
PY=.venv/bin/python
EPY=$PEERS_HOME/venv-eole/bin/python
[ -f "$RUN/config.yaml" ] || { echo "bench_translate: $RUN is not a trained run (MODE=quality bench_train.sh first)" >&2; exit 2; }
[ -f "$D/test.raw.en" ] || bash "$B/peers.sh" prep
mkdir -p "$RESULTS"

score_pieces() {  # row pieces hyp: detokenise a peer's output pieces, then score them as the harness does
  $PY "$B/bench_lib.py" detok --spm "$D/spm.model" --inp "$2" --out "$3"
  bash "$B/peers.sh" score "$1" "$3"
}

joey_greedy() {  # the harness's joey_decode for beam 1 only, on the model and config of its joey_train
  local J=$RUNS/joey ck conf=$RUNS/configs/joey_decode_beam1.yaml
  ck=$(readlink -f "$J/model/latest.ckpt" || true)
  [ -s "$ck" ] || { echo "bench_translate: no JoeyNMT model in $J (peers.sh joey_train first)" >&2; exit 2; }
  sed -e 's/^  beam_size: 5$/  beam_size: 1/' -e "s|^testing:\$|testing:\n  load_model: \"$ck\"|" \
    "$RUNS/configs/joey_train.yaml" > "$conf"
  grep -q '^  beam_size: 1$' "$conf" || { echo "bench_translate: unexpected JoeyNMT config $conf" >&2; exit 2; }
  $PY "$B/bench_lib.py" cpu-probe --threads 2 > "$RESULTS/cpu_probe.joey.beam1.json"
  bash "$B/peers.sh" measure joey.beam1 --stdin "$D/test.en" --stdout "$J/out/test.beam1.sp" \
    --stderr "$J/out/decode.beam1.log" -- "$PEERS_HOME/venv-joey/bin/python" -m joeynmt translate "$conf"
  score_pieces joey.beam1 "$J/out/test.beam1.sp" "$J/out/test.beam1.txt"
}

case "${PEERS:-0}" in
  1) bash "$B/peers.sh" eole_decode ct2 ;;
  joey) bash "$B/peers.sh" joey_decode eole_decode ct2 ;;
  joey-greedy) mkdir -p "$RUNS/joey/out"; joey_greedy ;;
esac

ct2_own() {  # beam: CTranslate2's own Python API on our int8 export, with the harness's settings for Eole's model
  local beam=$1 row=$NAME-ct2own-int8.beam$1
  [ -d "$RUN/ct2-int8" ] || "$SEQTOOL" export "$RUN" --format ctranslate2 --quantization int8 -o "$RUN/ct2-int8" >&2
  $PY "$B/bench_lib.py" cpu-probe --threads 2 > "$RESULTS/cpu_probe.$row.json"
  bash "$B/peers.sh" measure "$row" --repeat 2 --stdout "$RESULTS/$row.json" -- \
    $PY "$B/bench_lib.py" ct2 --model "$RUN/ct2-int8" --inp "$D/test.en" --out "$RESULTS/$row.sp" --beam "$beam" \
    --batch 32 --compute-type int8 --threads 2 --maxlen 202
  score_pieces "$row" "$RESULTS/$row.sp" "$RESULTS/$row.hyp"
}

eole_step() {  # newest complete Eole step folder under $1 (a harness RUNS folder), or nothing
  local d last=""
  for d in $(printf '%s\n' "$1"/eole/model/step_* | sort -t_ -k2 -n); do
    [[ -s "$d/config.json" && -s "$d/model.00.safetensors" && -s "$d/vocab.json" ]] && last="$d"
  done
  echo "$last"
}

eole_template() {  # an Eole model of the harness's architecture, for its config and vocabulary (weights unused)
  local tpl_runs=$PEERS_HOME/eole-template tpl
  tpl=$(eole_step "$RUNS")
  [ -n "$tpl" ] || tpl=$(eole_step "$tpl_runs")
  if [ -z "$tpl" ]; then  # one minute of the harness's own Eole training, saving at every update
    mkdir -p "$tpl_runs" && cp -r "$D" "$tpl_runs/"
    echo "bench_translate: one minute of Eole training for its config and vocabulary ($tpl_runs)" >&2
    RUNS=$tpl_runs BUDGET_MIN=1 SAVE_STEPS=1 bash "$B/peers.sh" eole_train > "$tpl_runs/template.log" 2>&1 || true
    tpl=$(eole_step "$tpl_runs")
  fi
  [ -n "$tpl" ] || { echo "bench_translate: no Eole model to take the config from (see $tpl_runs)" >&2; exit 2; }
  echo "$tpl"
}

eole_convert() {  # our best checkpoint as an Eole model in $RUN/eole, and Eole's input for it
  local ckpt
  ckpt=$($PY -c 'import sys; from pathlib import Path; from seqtool.rundir import RunDir, resolve_checkpoint
print(resolve_checkpoint(RunDir(Path(sys.argv[1])), "best"))' "$RUN")
  "$EPY" tests/benchmarks/to_eole.py "$ckpt" "$RUN/spm.model" "$(eole_template)" "$RUN/eole" >&2
  sed 's|$| </s>|' "$D/test.en" > "$RESULTS/$NAME-eole-same.src"  # our encoder reads `pieces </s>` (see to_eole.py)
}

eole_same() {  # beam: Eole's own decoding of our weights (eole_convert first), with the harness's Eole settings
  local beam=$1 row=$NAME-eole-same.beam$1
  $PY "$B/bench_lib.py" cpu-probe --threads 2 > "$RESULTS/cpu_probe.$row.json"
  bash "$B/peers.sh" measure "$row" --repeat 2 --stdout "$RESULTS/$row.log" --stderr stdout -- \
    "$PEERS_HOME/venv-eole/bin/eole" predict -model_path "$RUN/eole" -src "$RESULTS/$NAME-eole-same.src" \
    -output "$RESULTS/$row.sp" -beam_size "$beam" -batch_size 32 -batch_type sents -max_length_ratio 1.5 \
    -max_length 250 -seed 42 -report_time
  score_pieces "$row" "$RESULTS/$row.sp" "$RESULTS/$row.hyp"
}

for variant in $VARIANTS; do
  opts=()
  case "$variant" in
    ct2own-int8) for beam in $BEAMS; do ct2_own "$beam"; done; continue ;;
    eole-same) eole_convert; for beam in $BEAMS; do eole_same "$beam"; done; continue ;;
    default) ;;
    torch) opts=(--quantize none) ;;
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
