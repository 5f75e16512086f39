#!/usr/bin/env bash
# Several corpora and languages (issue 19), each row trained by its recipe's own budget in one sitting, the matmul
# probe beside each run; then the test sets with beam 5, scored by `seqtool eval` (sacrebleu BLEU and chrF).
#   WHAT=multilingual bash tests/benchmarks/bench_corpora.sh   # en->{de,fr} in one model (40 min) beside the two
#                                                               # bilingual recipes (20 min each)
#   WHAT=weighting bash tests/benchmarks/bench_corpora.sh      # wesnoth en->de alone, and with l10n en->de at
#                                                               # wesnoth:l10n weights 1:1, 3:1 and 10:1 (20 min each;
#                                                               # the recipe as it is, then those four rows on one
#                                                               # joint tokenizer trained on both corpora)
#   WHAT=throughput bash tests/benchmarks/bench_corpora.sh     # tok/s and peak RSS: wesnoth en->fr as one corpus,
#                                                               # and split in two corpora (MINUTES each, default 5)
#   WHAT=tags bash tests/benchmarks/bench_corpora.sh           # the en->{de,fr} recipe with its tags in front of the
#                                                               # source, then forced as the first target token
#                                                               # (data.tag_side; 40 min each), scored on the dev sets
# ROWS=own (weighting only) runs the recipe-as-is row alone, appending to an existing results.jsonl.
# SET="--set KEY=VALUE ..." is added to every training (a smoke test: SET="--set train.max_minutes=0.2").
# Writes $OUT/NAME.* and one JSON line per result to $OUT/results.jsonl; prints the table at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
WHAT=${WHAT:-multilingual}
OUT=${OUT:-runs/bench-corpora-$WHAT}
PY=.venv/bin/python
SEQTOOL=.venv/bin/seqtool
PROBE=${PROBE:-../shared/bench/bench_lib.py}
L10N=${L10N:-../shared/data/l10n-en-de}
read -ra EXTRA <<< "${SET:-}"  # e.g. SET="--set train.max_minutes=0.2" for a smoke test
ROWS=${ROWS:-all}
case "$ROWS" in all|own) ;; *) echo "ROWS must be all or own" >&2; exit 2 ;; esac
mkdir -p "$OUT"; [ "$ROWS" = own ] || rm -f "$OUT/results.jsonl"

probe() { [ -f "$PROBE" ] && $PY "$PROBE" cpu-probe --threads 2 > "$OUT/probe.$1.json" || echo '{}' > "$OUT/probe.$1.json"; }

train() {  # NAME CONFIG [--set ...]: a fresh run in $OUT/NAME, peak RSS sampled
  local name=$1 config=$2; shift 2
  rm -rf "${OUT:?}/$name"
  probe "$name.before"
  $SEQTOOL train "$config" --run-dir "$OUT/$name" "$@" "${EXTRA[@]}" 2> "$OUT/$name.log" &
  local pid=$!
  $PY tests/benchmarks/rss_sampler.py --pid "$pid" --out "$OUT/$name.rss.json" &
  wait "$pid"
  wait
  probe "$name.after"
}

score() {  # NAME RUN SRC REF [translate flags]: beam 5 on a test (or dev) set, BLEU and chrF into results.jsonl
  local name=$1 run=$2 src=$3 ref=$4; shift 4
  $SEQTOOL translate "$run" --beam 5 -i "$src" -o "$OUT/$name.hyp" --overwrite "$@"
  $SEQTOOL eval --hyp "$OUT/$name.hyp" --ref "$ref" --metrics bleu,chrf --json > "$OUT/$name.eval.json"
  $PY - "$OUT" "$name" "$run" "$src" <<'PY'
import json, sys
from pathlib import Path
out, name, run, split = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]).stem
scores = json.loads((out / f"{name}.eval.json").read_text())
records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
train = [r for r in records if r["type"] == "train"]
evals = [r for r in records if r["type"] == "eval"]
probes = [json.loads((out / f"probe.{run.name}.{w}.json").read_text() or "{}") for w in ("before", "after")]
rss = json.loads((out / f"{run.name}.rss.json").read_text())
tok_s = sorted(r["tgt_tok_s"] for r in train[len(train) // 5 :])  # the median after the first fifth (warm-up)
row = {
    "name": name, "run": run.name, "updates": train[-1]["step"], "minutes": round(train[-1]["elapsed_s"] / 60, 1),
    f"{split}_bleu": round(scores["BLEU"]["score"], 2), f"{split}_chrf": round(scores["chrF2"]["score"], 2),
    "best_dev_bleu": round(max(r["dev_bleu"] for r in evals), 2),
    "tgt_tok_s_median": round(tok_s[len(tok_s) // 2]), "peak_rss_mb": round(rss["peak_VmRSS_mb"]),
    "probe_gflops": [p.get("matmul_gflops") for p in probes],
}
with open(out / "results.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")

PY
}

DE=data/wesnoth-en-de; FR=data/wesnoth-en-fr
case "$WHAT" in
  multilingual)
    train de recipes/wesnoth-en-de/transformer.yaml
    train fr recipes/wesnoth-en-fr/transformer.yaml
    train defr recipes/wesnoth-en-defr/transformer.yaml
    score de "$OUT/de" $DE/test.en $DE/test.de
    score fr "$OUT/fr" $FR/test.en $FR/test.fr
    score defr-de "$OUT/defr" $DE/test.en $DE/test.de --tgt-lang de
    score defr-fr "$OUT/defr" $FR/test.en $FR/test.fr --tgt-lang fr
    ;;
  tags)
    # Decided on the dev sets (beam 5, as the test sets are scored); the recipe's test figures are in its README.
    train src-tag recipes/wesnoth-en-defr/transformer.yaml --set data.tag_side=source
    train tgt-tag recipes/wesnoth-en-defr/transformer.yaml --set data.tag_side=target
    for name in src-tag tgt-tag; do
      score "$name-de" "$OUT/$name" $DE/dev.en $DE/dev.de --tgt-lang de
      score "$name-fr" "$OUT/$name" $FR/dev.en $FR/dev.fr --tgt-lang fr
    done
    ;;
  weighting)
    # The recipe as it is (its tokenizer trained on Wesnoth only), then four rows sharing one tokenizer trained on both
    # corpora, so that the weights are the only difference between them.
    train own recipes/wesnoth-en-de/transformer.yaml
    score own "$OUT/own" $DE/test.en $DE/test.de
    [ "$ROWS" = own ] && { cat "$OUT/results.jsonl"; exit 0; }
    $SEQTOOL tokenizer train -i $DE/train.en -i $DE/train.de -i $L10N/train.en -i $L10N/train.de \
      --vocab-size 8000 -o "$OUT/spm"
    train alone recipes/wesnoth-en-de/transformer.yaml --set tokenizer.model="$OUT/spm.model"
    for w in 1 3 10; do
      train "w$w" recipes/wesnoth-en-de/transformer.yaml --set tokenizer.model="$OUT/spm.model" \
        --set data.train_src= --set data.train_tgt= \
        --set "data.train=[{name: wesnoth, src: $DE/train.en, tgt: $DE/train.de, weight: $w},
                           {name: l10n, src: $L10N/train.en, tgt: $L10N/train.de, weight: 1}]"
    done
    for name in alone w1 w3 w10; do score "$name" "$OUT/$name" $DE/test.en $DE/test.de; done
    ;;
  throughput)
    mins=${MINUTES:-5}
    half=$(( $(wc -l < $FR/train.en) / 2 ))
    head -n "$half" $FR/train.en > "$OUT/a.en"; head -n "$half" $FR/train.fr > "$OUT/a.fr"
    tail -n +"$((half + 1))" $FR/train.en > "$OUT/b.en"; tail -n +"$((half + 1))" $FR/train.fr > "$OUT/b.fr"
    for rep in 1 2; do
      train "one$rep" recipes/bench-wesnoth.yaml --set train.max_minutes="$mins" --set data.train_src=$FR/train.en \
        --set data.train_tgt=$FR/train.fr --set data.dev_src= --set data.dev_tgt=
      train "two$rep" recipes/bench-wesnoth.yaml --set train.max_minutes="$mins" --set data.train_src= \
        --set data.train_tgt= --set data.dev_src= --set data.dev_tgt= \
        --set "data.train=[{name: a, src: $OUT/a.en, tgt: $OUT/a.fr, weight: $half},
                           {name: b, src: $OUT/b.en, tgt: $OUT/b.fr, weight: $(( $(wc -l < $FR/train.en) - half ))}]"
    done
    $PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("one1", "two1", "one2", "two2"):
    train = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["type"] == "train"]
    tok = sorted(r["tgt_tok_s"] for r in train[len(train) // 5 :])
    rss = json.loads((out / f"{name}.rss.json").read_text())
    probe = json.loads((out / f"probe.{name}.before.json").read_text() or "{}").get("matmul_gflops")
    row = {"name": name, "updates": train[-1]["step"], "tgt_tok_s_median": round(tok[len(tok) // 2]),
           "peak_rss_mb": round(rss["peak_VmRSS_mb"]), "probe_gflops": probe}
    print(json.dumps(row))
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
PY
    ;;
  *) echo "WHAT must be multilingual, weighting, throughput or tags" >&2; exit 2 ;;
esac
cat "$OUT/results.jsonl"
