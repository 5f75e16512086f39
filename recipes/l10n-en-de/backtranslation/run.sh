#!/usr/bin/env bash
# Back-translation on l10n-en-de, simulated (issue 17): the first PARALLEL training pairs are the parallel data, only
# the German side of the rest is used, as monolingual text. A de->en model trained on the parallel pairs translates
# that German into English, by sampling and by beam search; en->de models are then trained, each for MINUTES, on:
#   real      the PARALLEL real pairs alone
#   bt-sample real + the sampled synthetic pairs (untagged, the two files concatenated)
#   bt-beam   real + the beam-5 synthetic pairs
#   all-real  every real pair of TRAIN (the upper bound: the "monolingual" German with its real English)
# and scored with beam 5 on the dev and test sets (sacrebleu BLEU and chrF via `seqtool eval`), the matmul probe beside
# each training. Run from anywhere; writes $OUT/NAME/ (runs), $OUT/data/, $OUT/results.jsonl and prints the table.
#   bash recipes/l10n-en-de/backtranslation/run.sh                                      # the 100k pairs in data/
#   TRAIN=../shared/data/l10n-en-de bash recipes/l10n-en-de/backtranslation/run.sh      # the full 148k-pair split
#   MINUTES=0.2 PARALLEL=2000 MONO=1000 SET="--set tokenizer.vocab_size=1000" \
#     bash recipes/l10n-en-de/backtranslation/run.sh                                   # a smoke test (~3 min)
# SET="--set KEY=VALUE ..." is added to every training.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-runs/backtranslation}
TRAIN=${TRAIN:-data/l10n-en-de}    # train.en/train.de; the dev and test sets are always data/l10n-en-de's
PARALLEL=${PARALLEL:-50000}        # real pairs kept as the parallel data
MONO=${MONO:-0}                    # German lines used as monolingual text (0 = all the rest)
MINUTES=${MINUTES:-20}             # training budget of every model
SAMPLE=${SAMPLE:---sample --seed 1}  # unrestricted sampling (Edunov et al., 2018); e.g. add --top-k 10
SEQTOOL=${SEQTOOL:-.venv/bin/seqtool}
PY=${PY:-.venv/bin/python}
PROBE=${PROBE:-../shared/bench/bench_lib.py}
RECIPE=recipes/l10n-en-de/transformer.yaml
read -ra EXTRA <<< "${SET:-}"
D=data/l10n-en-de
mkdir -p "$OUT/data"; rm -f "$OUT/results.jsonl" "$OUT/decode_times.jsonl"

probe() { [ -f "$PROBE" ] && $PY "$PROBE" cpu-probe --threads 2 > "$OUT/probe.$1.json" || echo '{}' > "$OUT/probe.$1.json"; }

train() {  # NAME SRC_FILE TGT_FILE DEV_SRC DEV_TGT: a fresh MINUTES-minute run of the recipe in $OUT/NAME
  local name=$1
  probe "$name.before"
  $SEQTOOL train "$RECIPE" --run-dir "$OUT/$name" --overwrite --set "name=bt-$name" \
    --set "data.train_src=$2" --set "data.train_tgt=$3" --set "data.dev_src=$4" --set "data.dev_tgt=$5" \
    --set "train.max_minutes=$MINUTES" "${EXTRA[@]}" 2> "$OUT/$name.log"
  probe "$name.after"
}

score() {  # NAME: beam 5 on dev and test, one JSON line into results.jsonl
  local name=$1 split
  for split in dev test; do
    $SEQTOOL translate "$OUT/$name" --beam 5 -i "$D/$split.en" -o "$OUT/$name.$split.hyp" --overwrite
    $SEQTOOL eval --hyp "$OUT/$name.$split.hyp" --ref "$D/$split.de" --metrics bleu,chrf --json > "$OUT/$name.$split.json"
  done
  $PY - "$OUT" "$name" <<'PY'
import json, sys
from pathlib import Path
out, name = Path(sys.argv[1]), sys.argv[2]
records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
train = [r for r in records if r["type"] == "train"]
pairs = sum(1 for _ in open(out / "data" / f"{name}.en", encoding="utf-8"))
row = {"name": name, "pairs": pairs, "updates": train[-1]["step"], "minutes": round(train[-1]["elapsed_s"] / 60, 1)}
for split in ("dev", "test"):
    scores = json.loads((out / f"{name}.{split}.json").read_text())
    row[f"{split}_bleu"], row[f"{split}_chrf"] = round(scores["BLEU"]["score"], 2), round(scores["chrF2"]["score"], 2)
row["probe_gflops"] = [json.loads((out / f"probe.{name}.{w}.json").read_text()).get("matmul_gflops")
                       for w in ("before", "after")]
with open(out / "results.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
PY
}

# the data: PARALLEL real pairs, the German of the next MONO lines as monolingual text
total=$(wc -l < "$TRAIN/train.de")
[ "$PARALLEL" -lt "$total" ] || { echo "PARALLEL ($PARALLEL) must be below the $total training pairs" >&2; exit 2; }
rest=$(( total - PARALLEL )); [ "$MONO" -gt 0 ] && [ "$MONO" -lt "$rest" ] && rest=$MONO
head -n "$PARALLEL" "$TRAIN/train.en" > "$OUT/data/real.en"
head -n "$PARALLEL" "$TRAIN/train.de" > "$OUT/data/real.de"
lines="$(( PARALLEL + 1 )),$(( PARALLEL + rest ))p"
sed -n "$lines" "$TRAIN/train.de" > "$OUT/data/mono.de"
sed -n "$lines" "$TRAIN/train.en" > "$OUT/data/mono.real.en"
cat "$OUT/data/real.en" "$OUT/data/mono.real.en" > "$OUT/data/all-real.en"
cat "$OUT/data/real.de" "$OUT/data/mono.de" > "$OUT/data/all-real.de"
echo "parallel: $PARALLEL pairs; monolingual German: $rest lines; budget $MINUTES min per model" >&2

# 1. the reverse model, de->en, on the parallel pairs only
train de-en "$OUT/data/real.de" "$OUT/data/real.en" "$D/dev.de" "$D/dev.en"

# 2. back-translate the monolingual German: sampled, then beam 5 (timed: the decoding cost of each)
for how in sample beam; do
  flags=$SAMPLE; [ "$how" = beam ] && flags="--beam 5"
  SECONDS=0
  # shellcheck disable=SC2086  # the flags are words
  $SEQTOOL translate "$OUT/de-en" $flags -i "$OUT/data/mono.de" -o "$OUT/data/mono.$how.en" --overwrite
  echo "{\"decode\": \"$how\", \"lines\": $rest, \"seconds\": $SECONDS}" >> "$OUT/decode_times.jsonl"
  cat "$OUT/data/real.en" "$OUT/data/mono.$how.en" > "$OUT/data/bt-$how.en"
  cat "$OUT/data/real.de" "$OUT/data/mono.de" > "$OUT/data/bt-$how.de"
done

# 3. en->de on each training set, the same budget, then dev and test with beam 5
for name in real bt-sample bt-beam all-real; do
  train "$name" "$OUT/data/$name.en" "$OUT/data/$name.de" "$D/dev.en" "$D/dev.de"
  score "$name"
done

$PY - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| training data | pairs | updates | dev BLEU | dev chrF2 | test BLEU | test chrF2 | probe GFLOP/s |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    probes = "/".join(f"{p:.0f}" if p else "-" for p in r["probe_gflops"])
    print(f"| {r['name']} | {r['pairs']:,} | {r['updates']:,} | {r['dev_bleu']} | {r['dev_chrf']} | {r['test_bleu']} "
          f"| {r['test_chrf']} | {probes} |")
PY
