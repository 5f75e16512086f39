#!/usr/bin/env bash
# `seqtool serve` under load beside offline `seqtool translate` of the same sentences, in one sitting, loopback only:
#   RUN=runs/bench-seqtool-bf16 bash tests/benchmarks/bench_serve.sh          (make bench-serve)
#   ENGINES="torch ctranslate2"   CLIENTS="1 8 32 64"   BEAM=5   THREADS=2   REPEAT=2
#   INPUT=../shared/data/wesnoth-en-de/test.en   OUT=$RUN/bench-serve   PORT=8090   BATCHING=rounds|continuous
#   TORCH_FLAGS="--precision bf16"   (decoding options for the torch engine, offline and served alike)
# For each engine: offline translate REPEAT times (median seconds, peak RSS), then one server and, for each client
# count, every input line sent once as its own request (tests/benchmarks/load_serve.py); the matmul probe of
# ../shared/bench beside each measurement. The CTranslate2 engine uses an int8 export (made if missing).
# Prints one table (also $OUT/table.md): sentences/s, share of offline, latency percentiles, failures, peak RSS.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${RUN:-runs/bench-seqtool-bf16}
ENGINES=${ENGINES:-"torch ctranslate2"}
CLIENTS=${CLIENTS:-"1 8 32 64"}
BEAM=${BEAM:-5}
THREADS=${THREADS:-2}
REPEAT=${REPEAT:-2}
INPUT=${INPUT:-../shared/data/wesnoth-en-de/test.en}
OUT=${OUT:-$RUN/bench-serve}
PORT=${PORT:-8090}
BATCHING=${BATCHING:-rounds}
read -r -a TORCH_FLAGS <<< "${TORCH_FLAGS:-}"
PY=.venv/bin/python
SEQTOOL=.venv/bin/seqtool
PROBE="$PY ../shared/bench/bench_lib.py cpu-probe --threads $THREADS"
[ -f "$RUN/config.yaml" ] || { echo "bench_serve: $RUN is not a trained run (make bench-quality first)" >&2; exit 2; }
[ -f "$INPUT" ] || { echo "bench_serve: no input file $INPUT" >&2; exit 2; }
mkdir -p "$OUT"

probe() { $PROBE > "$OUT/probe.$1.json" 2>/dev/null || echo '{}' > "$OUT/probe.$1.json"; }

for engine in $ENGINES; do
  flags=(--beam "$BEAM" --threads "$THREADS")
  serve_flags=(--threads "$THREADS" --batching "$BATCHING")
  if [ "$engine" = torch ]; then
    flags+=("${TORCH_FLAGS[@]}")
    serve_flags+=("${TORCH_FLAGS[@]}")
  fi
  if [ "$engine" = ctranslate2 ]; then
    [ -d "$RUN/ct2-int8" ] || "$SEQTOOL" export "$RUN" --format ctranslate2 --quantization int8 -o "$RUN/ct2-int8" >&2
    flags+=(--engine ctranslate2 --ct2-model "$RUN/ct2-int8")
    serve_flags+=(--engine ctranslate2 --ct2-model "$RUN/ct2-int8")
  fi
  for rep in $(seq "$REPEAT"); do
    probe "$engine.offline.$rep"
    /usr/bin/time -f '{"seconds": %e, "peak_kb": %M}' -o "$OUT/offline.$engine.$rep.json" \
      "$SEQTOOL" translate "$RUN" "${flags[@]}" < "$INPUT" > "$OUT/offline.$engine.hyp"
  done
  "$SEQTOOL" serve "$RUN" --port "$PORT" --max-lines 1000000 "${serve_flags[@]}" 2> "$OUT/server.$engine.log" &
  server=$!
  $PY tests/benchmarks/rss_sampler.py --pid "$server" --out "$OUT/server.$engine.rss.json" &
  sampler=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
    kill -0 "$server" 2> /dev/null || { echo "bench_serve: the server died (see $OUT/server.$engine.log)" >&2; exit 1; }
    sleep 0.2
  done
  for clients in $CLIENTS; do
    probe "$engine.c$clients"
    $PY tests/benchmarks/load_serve.py --url "http://127.0.0.1:$PORT" --input "$INPUT" --clients "$clients" \
      --beam "$BEAM" --out "$OUT/load.$engine.c$clients.json" --hyp "$OUT/load.$engine.c$clients.hyp" > /dev/null
  done
  kill -TERM "$server"
  wait "$server" || { echo "bench_serve: the server did not exit cleanly on SIGTERM" >&2; exit 1; }
  wait "$sampler" || true
done

$PY - "$OUT" "$ENGINES" "$CLIENTS" "$REPEAT" "$INPUT" << 'EOF'
import json, statistics, sys
from pathlib import Path
out, engines, clients, repeat, source = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4]), sys.argv[5]
load = lambda name: json.loads((out / name).read_text())
gflops = lambda name: load(f"probe.{name}.json").get("matmul_gflops", "-")
rows = ["| engine | clients | sent/s | share of offline | p50 ms | p95 ms | p99 ms | failed | peak RSS MB | probe GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|"]
lines = len(Path(source).read_text(encoding="utf-8").splitlines())
for engine in engines:
    runs = [load(f"offline.{engine}.{r}.json") for r in range(1, repeat + 1)]
    offline = lines / statistics.median(r["seconds"] for r in runs)
    peak = max(r["peak_kb"] for r in runs) / 1024
    probes = "/".join(str(gflops(f"{engine}.offline.{r}")) for r in range(1, repeat + 1))
    rows.append(f"| {engine} | offline translate | {offline:.1f} | 1.00 | - | - | - | - | {peak:.0f} | {probes} |")
    server_rss = load(f"server.{engine}.rss.json").get("peak_VmRSS_mb", "-")
    hyp = (out / f"offline.{engine}.hyp").read_text(encoding="utf-8")
    for c in clients:
        r = load(f"load.{engine}.c{c}.json")
        same = (out / f"load.{engine}.c{c}.hyp").read_text(encoding="utf-8") == hyp
        rows.append(f"| {engine} | {c} | {r['sent_per_s']:.1f} | {r['sent_per_s'] / offline:.2f} | {r['p50_ms']} | "
                    f"{r['p95_ms']} | {r['p99_ms']} | {r['failures']} | {server_rss} | {gflops(f'{engine}.c{c}')} |"
                    + ("" if same else " (outputs differ from offline)"))
table = "\n".join(rows)
(out / "table.md").write_text(table + "\n")
print(table)
EOF
