#!/usr/bin/env bash
# IWSLT14 German→English (TED talk transcripts) for recipes/iwslt14-de-en/transformer.yaml: download, extract,
# clean, split into train/dev/test, train a joint SentencePiece model.
#
# NEEDS INTERNET ACCESS (it downloads the corpus): it cannot run in an offline environment.
#
# Usage, from the repository root:
#   bash recipes/iwslt14-de-en/prepare.sh data/iwslt14-de-en
#
# The split is the one of fairseq's widely used examples/translation/prepare-iwslt14.sh (this is an independent
# script that follows the same steps): the TED training transcripts without their metadata lines, cleaned; every
# 23rd pair of them is dev (fairseq's "valid"), the rest is train; test = TED.dev2010 + TEDX.dev2012 + TED.tst2010 +
# TED.tst2011 + TED.tst2012 (6,750 pairs). Unlike fairseq's script, the text stays cased and untokenised:
# SentencePiece works on raw text, and seqtool scores detokenised output with sacreBLEU. The cleaning keeps pairs of
# 1-175 tokens with a length ratio of at most 1.5, as fairseq's does, but counts words plus punctuation marks (an
# approximation of the Moses tokens fairseq counts), so train and dev may differ slightly from fairseq's; the test
# set has the same sentences.
#
# Writes into DATA_DIR: train.{de,en}, dev.{de,en}, test.{de,en}, spm.model, spm.vocab (joint BPE, 10k pieces) and
# download/de-en.tgz. Safe to re-run: finished steps are skipped (DATA_DIR/.seqtool-prepare/ records them), and a
# file this script did not write is never replaced: it stops and names the file. A de-en.tgz you put into
# DATA_DIR/download/ yourself is used instead of downloading it.
#
# Environment: SEQTOOL (default: seqtool), PYTHON (default: python3), IWSLT14_URL (another copy of de-en.tgz),
# VOCAB_SIZE (default: 10000).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../prepare-lib.sh"  # die, need, fetch, step, clean
[[ $# -eq 1 && $1 != -* ]] || die "usage: $0 DATA_DIR   (e.g. $0 data/iwslt14-de-en; needs internet access)"

DIR=${1%/}
SEQTOOL=${SEQTOOL:-seqtool}
PYTHON=${PYTHON:-python3}
URL=${IWSLT14_URL:-http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz}
VOCAB_SIZE=${VOCAB_SIZE:-10000}

# -- the tools --------------------------------------------------------------------------------------------------------
for tool in tar gzip grep sed awk tr wc; do need "$tool"; done
need "$PYTHON" "set PYTHON=/path/to/python3"
need "$SEQTOOL" "install seqtool and activate its environment, or set SEQTOOL=/path/to/seqtool"

WORK=$DIR/.seqtool-prepare # this script's own state: step stamps and temporary files
mkdir -p "$DIR/download" "$WORK"

TEXT_OUT=("$DIR"/train.{de,en} "$DIR"/dev.{de,en} "$DIR"/test.{de,en})
SPM_OUT=("$DIR/spm.model" "$DIR/spm.vocab")
unwritten text "${TEXT_OUT[@]}"
unwritten tokenizer "${SPM_OUT[@]}"

# -- 1. download -------------------------------------------------------------------------------------------------------
TGZ=$DIR/download/de-en.tgz
if [[ -e $TGZ ]]; then
    echo "== download: using $TGZ"
else
    echo "== download: $URL"
    fetch "$URL" "$WORK/de-en.tgz.part"
    mv "$WORK/de-en.tgz.part" "$TGZ"
fi
tar -tzf "$TGZ" >/dev/null || die "$TGZ is not a readable .tgz archive (an interrupted download? delete it, run again)"

# -- 2. train / dev / test text ----------------------------------------------------------------------------------------
if step text "${TEXT_OUT[@]}"; then
    tmp=$WORK/tmp
    rm -rf "$tmp"
    mkdir -p "$tmp"
    tar -xzf "$TGZ" -C "$tmp"
    orig=$tmp/de-en
    [[ -f $orig/train.tags.de-en.de && -f $orig/train.tags.de-en.en ]] ||
        die "$TGZ holds no de-en/train.tags.de-en.{de,en}: not the IWSLT14 de-en archive?"

    for l in de en; do
        # the training transcripts without metadata lines; titles and descriptions stay, as text
        tr -d '\r' <"$orig/train.tags.de-en.$l" |
            grep -v -e '<url>' -e '<talkid>' -e '<keywords>' |
            sed -e 's/<title>//g' -e 's/<\/title>//g' -e 's/<description>//g' -e 's/<\/description>//g' \
                >"$tmp/train.tags.$l"
        # the evaluation sets: the text of the <seg> elements, typographic apostrophes made plain
        for part in TED.dev2010 TEDX.dev2012 TED.tst2010 TED.tst2011 TED.tst2012; do
            xml=$orig/IWSLT14.$part.de-en.$l.xml
            [[ -f $xml ]] || die "$TGZ holds no ${xml#"$tmp"/}"
            tr -d '\r' <"$xml" | grep '<seg id' |
                sed -e 's/<seg id="[0-9]*">[[:space:]]*//g' -e 's/[[:space:]]*<\/seg>[[:space:]]*//g' -e "s/’/'/g" \
                    >"$tmp/$part.$l"
        done
        cat "$tmp"/{TED.dev2010,TEDX.dev2012,TED.tst2010,TED.tst2011,TED.tst2012}."$l" >"$tmp/test.$l"
    done
    [[ $(wc -l <"$tmp/test.de") -eq $(wc -l <"$tmp/test.en") ]] || die "test: German and English differ in length"

    clean "$tmp/train.tags.de" "$tmp/train.tags.en" "$tmp/clean.de" "$tmp/clean.en" 175 1.5
    for l in de en; do
        awk 'NR % 23 == 0' "$tmp/clean.$l" >"$tmp/dev.$l"
        awk 'NR % 23 != 0' "$tmp/clean.$l" >"$tmp/train.$l"
    done
    for f in train.de train.en dev.de dev.en test.de test.en; do
        mv "$tmp/$f" "$DIR/$f"
    done
    finish text
    rm -rf "$tmp"
fi

# -- 3. the joint SentencePiece model ----------------------------------------------------------------------------------
if step tokenizer "${SPM_OUT[@]}"; then
    "$SEQTOOL" tokenizer train -i "$DIR/train.de" -i "$DIR/train.en" --vocab-size "$VOCAB_SIZE" --type bpe \
        -o "$DIR/spm"
    finish tokenizer
fi

echo
echo "IWSLT14 de-en in $DIR (lines):"
wc -l "$DIR"/train.de "$DIR"/dev.de "$DIR"/test.de | sed 's/^/  /'
echo "next:  seqtool train recipes/iwslt14-de-en/transformer.yaml --run-dir runs/iwslt14-de-en"
