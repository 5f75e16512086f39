#!/usr/bin/env bash
# Decoding controls side by side, in one sitting: beam search, greedy, sampling, scoring, a target prefix, --align
# and a 2-model ensemble, each `seqtool translate`/`score` of the same input (make bench-controls):
#   RUN=runs/bench-seqtool-bf16 INPUT=../shared/data/wesnoth-en-de/test.en bash tests/benchmarks/bench_controls.sh
#   THREADS=2  REPEAT=2  OUT=$RUN/bench-controls
# Prints one table (also $OUT/table.md): median seconds and sentences/s of REPEAT runs, with the matmul probe of
# ../shared/bench beside each.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-runs/bench-seqtool-bf16}
INPUT=${INPUT:-../shared/data/wesnoth-en-de/test.en}
THREADS=${THREADS:-2}
REPEAT=${REPEAT:-2}
OUT=${OUT:-$RUN/bench-controls}
PY=.venv/bin/python
SEQTOOL=.venv/bin/seqtool
[ -f "$RUN/config.yaml" ] || { echo "bench_controls: $RUN is not a trained run" >&2; exit 2; }
[ -f "$INPUT" ] || { echo "bench_controls: no input file $INPUT" >&2; exit 2; }
mkdir -p "$OUT"
T=(--threads "$THREADS" --quantize none)

# the inputs of scoring and of the prefix run: the beam output, and its first word as the prefix
"$SEQTOOL" translate "$RUN" "${T[@]}" --beam 5 < "$INPUT" > "$OUT/beam.hyp"
paste "$INPUT" "$OUT/beam.hyp" > "$OUT/pairs.tsv"
paste "$INPUT" <(cut -d' ' -f1 "$OUT/beam.hyp") > "$OUT/prefix.tsv"

declare -A CMDS=(
  [1-beam5]="translate $RUN ${T[*]} --beam 5"
  [2-greedy]="translate $RUN ${T[*]} --beam 1"
  [3-sample]="translate $RUN ${T[*]} --sample --top-k 10"
  [4-sample-nbest5]="translate $RUN ${T[*]} --sample --top-k 10 --nbest 5"
  [5-score]="score $RUN --threads $THREADS"
  [6-prefix-beam5]="translate $RUN ${T[*]} --beam 5 --prefix"
  [7-align-beam5]="translate $RUN ${T[*]} --beam 5 --align"
  [8-ensemble2-beam5]="translate $RUN $RUN ${T[*]} --beam 5"
)
for name in $(printf '%s\n' "${!CMDS[@]}" | sort); do
  input=$INPUT
  [ "$name" = 5-score ] && input=$OUT/pairs.tsv
  [ "$name" = 6-prefix-beam5 ] && input=$OUT/prefix.tsv
  for rep in $(seq "$REPEAT"); do
    $PY ../shared/bench/bench_lib.py cpu-probe --threads "$THREADS" > "$OUT/probe.$name.$rep.json" 2> /dev/null \
      || echo '{}' > "$OUT/probe.$name.$rep.json"
    /usr/bin/time -f '{"seconds": %e, "peak_kb": %M}' -o "$OUT/time.$name.$rep.json" \
      $SEQTOOL ${CMDS[$name]} < "$input" > "$OUT/out.$name.txt"
  done
done

$PY - "$OUT" "$REPEAT" "$INPUT" << 'EOF'
import json, statistics, sys
from pathlib import Path
out, repeat, source = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lines = len(Path(source).read_text(encoding="utf-8").splitlines())
names = sorted({p.name.split(".")[1] for p in out.glob("time.*.json")})
rows = ["| run | seconds (median) | sentences/s | vs beam 5 | peak RSS MB | probe GFLOP/s |", "|---|---|---|---|---|---|"]
base = None
for name in names:
    runs = [json.loads((out / f"time.{name}.{r}.json").read_text()) for r in range(1, repeat + 1)]
    seconds = statistics.median(r["seconds"] for r in runs)
    base = base or seconds
    probes = "/".join(str(json.loads((out / f"probe.{name}.{r}.json").read_text()).get("matmul_gflops", "-"))
                      for r in range(1, repeat + 1))
    peak = max(r["peak_kb"] for r in runs) / 1024
    rows.append(f"| {name.split('-', 1)[1]} | {seconds:.1f} | {lines / seconds:.1f} | {base / seconds:.2f}× | "
                f"{peak:.0f} | {probes} |")
table = "\n".join(rows)
(out / "table.md").write_text(table + "\n")
print(table)
EOF
