# Shared by the recipes' prepare.sh scripts (sourced, not run): error exit, tool checks, download, step bookkeeping
# (finished steps are skipped, files of others are never replaced) and corpus cleaning.
# The sourcing script sets PYTHON and WORK (its own state directory) before calling them.

die() {
    echo "error: $*" >&2
    exit 1
}

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is needed but not on PATH${2:+ ($2)}"; }

# fetch URL FILE: download with curl or wget, whichever is there
if command -v curl >/dev/null 2>&1; then
    fetch() { curl -fL --retry 3 --progress-bar -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
    fetch() { wget -O "$2" "$1"; }
else
    fetch() { die "'curl' or 'wget' is needed to download the corpus"; }
fi

# -- bookkeeping, in $WORK (set by the script): finished steps are skipped, files of others are never replaced -------

# unwritten NAME OUTPUT...: stop if step NAME has not finished but one of its outputs exists already (a file this
# script did not write); checked for every step before any work starts, and again when the step starts.
unwritten() {
    local name=$1 f
    shift
    [[ ! -e $WORK/$name.done ]] || return 0
    for f in "$@"; do
        [[ ! -e $f ]] || die "$f exists and was not written by this script; move it away or use another DATA_DIR"
    done
}
# step NAME OUTPUT...: true when the step has to run; a finished step is skipped (its outputs must still exist).
step() {
    local name=$1 f
    shift
    if [[ -e $WORK/$name.done ]]; then
        for f in "$@"; do
            [[ -e $f ]] || die "$f is missing although step '$name' finished; delete $WORK/$name.done to redo it"
        done
        echo "== $name: done earlier, skipped"
        return 1
    fi
    unwritten "$name" "$@"
    echo "== $name"
}
finish() { touch "$WORK/$1.done"; }

# clean SRC_IN TGT_IN SRC_OUT TGT_OUT MAX_TOKENS MAX_RATIO: one segment per line, whitespace collapsed, no tabs or
# control characters, invalid UTF-8 replaced; drops empty pairs, pairs longer than MAX_TOKENS on a side and pairs
# whose token counts differ by more than MAX_RATIO (tokens = words + punctuation marks, close to Moses tokens).
clean() {
    "$PYTHON" - "$@" <<'PY'
import itertools
import re
import sys

src_in, tgt_in, src_out, tgt_out, max_tokens, max_ratio = sys.argv[1:7]
max_tokens, max_ratio = int(max_tokens), float(max_ratio)
control = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
space = re.compile(r"\s+")
punct = re.compile(r"[^\w\s]")
kept = dropped = 0
fs = open(src_in, encoding="utf-8", errors="replace", newline="\n")
ft = open(tgt_in, encoding="utf-8", errors="replace", newline="\n")
out_s = open(src_out, "w", encoding="utf-8")
out_t = open(tgt_out, "w", encoding="utf-8")
for s, t in itertools.zip_longest(fs, ft):
    if s is None or t is None:
        sys.exit(f"error: {src_in} and {tgt_in} have different line counts")
    s = space.sub(" ", control.sub(" ", s)).strip()
    t = space.sub(" ", control.sub(" ", t)).strip()
    ns = len(s.split()) + len(punct.findall(s))
    nt = len(t.split()) + len(punct.findall(t))
    if not (1 <= ns <= max_tokens and 1 <= nt <= max_tokens) or ns > max_ratio * nt or nt > max_ratio * ns:
        dropped += 1
        continue
    out_s.write(s + "\n")
    out_t.write(t + "\n")
    kept += 1
out_s.close()
out_t.close()
print(f"   cleaning: kept {kept:,} of {kept + dropped:,} pairs (dropped {dropped:,})")
PY
}
