#!/usr/bin/env bash
# The demo: train a tokenizer and a small Transformer on data/l10n-en-de (CPU, 11 minutes of training),
# translate the test set with beam 5 and score it with sacrebleu. Run from the repository root (`make demo`).
set -euo pipefail
SEQTOOL=${SEQTOOL:-.venv/bin/seqtool}
RUN=${RUN:-runs/demo}
start=$(date +%s)

$SEQTOOL train recipes/demo-l10n-en-de.yaml --run-dir "$RUN" --overwrite
$SEQTOOL translate "$RUN" --beam 5 -i data/l10n-en-de/test.en -o "$RUN/test.hyp.de" --overwrite
echo
echo "== test set (data/l10n-en-de/test.*, 1000 sentences), beam 5 =="
$SEQTOOL eval --hyp "$RUN/test.hyp.de" --ref data/l10n-en-de/test.de
echo
echo "examples:"
paste -d '\n' <(head -5 data/l10n-en-de/test.en | sed 's/^/  en:  /') \
              <(head -5 "$RUN/test.hyp.de" | sed 's/^/  out: /') \
              <(head -5 data/l10n-en-de/test.de | sed 's/^/  ref: /')
echo "demo wall time: $(( $(date +%s) - start )) s"
