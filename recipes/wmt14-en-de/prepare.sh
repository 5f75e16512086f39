#!/usr/bin/env bash
# WMT14 English→German, with the WMT16 training data, for recipes/wmt14-en-de/transformer-base.yaml: download
# Europarl v7, Common Crawl and News Commentary v11 from statmt.org, clean them, take newstest2013 (dev) and
# newstest2014 (test) from sacrebleu, train a joint SentencePiece model of 32k pieces.
#
# NEEDS INTERNET ACCESS (over 1 GB of archives) and several GB of free disk: it cannot run in an offline environment.
#
# Usage, from the repository root:
#   bash recipes/wmt14-en-de/prepare.sh data/wmt14-en-de
#
# The training data is WMT16's en-de parallel data (about 4.5M pairs before cleaning), as used for Transformer-base
# in fairseq's and tensor2tensor's WMT en-de recipes. The test set is the full newstest2014 (3,003 sentences,
# sacrebleu's `wmt14/full`), which is the set the literature's figures were measured on (fairseq's script downloads
# statmt.org's test-full.tgz); sacrebleu's plain `wmt14` is the official filtered set (2,737 sentences): set
# TEST_SET=wmt14 for it. The text stays cased and untokenised (SentencePiece works on raw text); the cleaning keeps
# pairs of 1-250 tokens with a length ratio of at most 1.5, as fairseq's does on BPE tokens, but counts words plus
# punctuation marks.
#
# Writes into DATA_DIR: train.{en,de}, dev.{en,de}, test.{en,de}, spm.model, spm.vocab and the archives in
# download/. Safe to re-run: finished steps are skipped (DATA_DIR/.seqtool-prepare/ records them), and a file this
# script did not write is never replaced: it stops and names the file. Archives you put into DATA_DIR/download/
# yourself (under the names below) are used instead of downloading them.
#
# Environment: SEQTOOL (default: seqtool), SACREBLEU (default: sacrebleu), PYTHON (default: python3),
# VOCAB_SIZE (default: 32000), TEST_SET (default: wmt14/full), URL_EUROPARL, URL_COMMONCRAWL, URL_NEWS_COMMENTARY
# (other copies of the archives).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../prepare-lib.sh"  # die, need, fetch, step, clean
[[ $# -eq 1 && $1 != -* ]] || die "usage: $0 DATA_DIR   (e.g. $0 data/wmt14-en-de; needs internet access)"

DIR=${1%/}
SEQTOOL=${SEQTOOL:-seqtool}
SACREBLEU=${SACREBLEU:-sacrebleu}
PYTHON=${PYTHON:-python3}
VOCAB_SIZE=${VOCAB_SIZE:-32000}
TEST_SET=${TEST_SET:-wmt14/full}
# archive name in DATA_DIR/download, its URL, the corpus inside it (files CORPUS.en and CORPUS.de)
URL_EUROPARL=${URL_EUROPARL:-https://www.statmt.org/europarl/v7/de-en.tgz}
URL_COMMONCRAWL=${URL_COMMONCRAWL:-https://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz}
URL_NEWS_COMMENTARY=${URL_NEWS_COMMENTARY:-https://data.statmt.org/wmt16/translation-task/training-parallel-nc-v11.tgz}
ARCHIVES=(
    "europarl-v7-de-en.tgz $URL_EUROPARL europarl-v7.de-en"
    "training-parallel-commoncrawl.tgz $URL_COMMONCRAWL commoncrawl.de-en"
    "training-parallel-nc-v11.tgz $URL_NEWS_COMMENTARY news-commentary-v11.de-en"
)

# -- the tools --------------------------------------------------------------------------------------------------------
for tool in tar gzip awk sed wc; do need "$tool"; done
need "$PYTHON" "set PYTHON=/path/to/python3"
need "$SEQTOOL" "install seqtool and activate its environment, or set SEQTOOL=/path/to/seqtool"
need "$SACREBLEU" "pip install sacrebleu (seqtool depends on it: it is in seqtool's environment)"

WORK=$DIR/.seqtool-prepare # this script's own state: step stamps and temporary files
mkdir -p "$DIR/download" "$WORK"

# member ARCHIVE NAME: the path inside ARCHIVE of the file called NAME (empty when there is none)
member() {
    tar -tzf "$1" |
        awk -v want="$2" '$0 == want || substr($0, length($0) - length(want)) == "/" want { print; exit }' || true
}

TRAIN_OUT=("$DIR"/train.{en,de})
DEVTEST_OUT=("$DIR"/dev.{en,de} "$DIR"/test.{en,de})
SPM_OUT=("$DIR/spm.model" "$DIR/spm.vocab")
unwritten train "${TRAIN_OUT[@]}"
unwritten devtest "${DEVTEST_OUT[@]}"
unwritten tokenizer "${SPM_OUT[@]}"

# -- 1. download -------------------------------------------------------------------------------------------------------
for entry in "${ARCHIVES[@]}"; do
    read -r file url _ <<<"$entry"
    if [[ -e $DIR/download/$file ]]; then
        echo "== download: using $DIR/download/$file"
    else
        echo "== download: $url"
        fetch "$url" "$WORK/$file.part"
        mv "$WORK/$file.part" "$DIR/download/$file"
    fi
done

# -- 2. training data: the three corpora, concatenated and cleaned -----------------------------------------------------
if step train "${TRAIN_OUT[@]}"; then
    tmp=$WORK/tmp
    rm -rf "$tmp"
    mkdir -p "$tmp"
    : >"$tmp/raw.en"
    : >"$tmp/raw.de"
    for entry in "${ARCHIVES[@]}"; do
        read -r file _ corpus <<<"$entry"
        archive=$DIR/download/$file
        for l in en de; do
            path=$(member "$archive" "$corpus.$l")
            [[ -n $path ]] || die "$archive holds no $corpus.$l (an interrupted download? delete it and run again)"
            tar -xzOf "$archive" "$path" >"$tmp/part.$l"
        done
        n_en=$(wc -l <"$tmp/part.en")
        n_de=$(wc -l <"$tmp/part.de")
        [[ $n_en -eq $n_de ]] || die "$corpus: $n_en English lines but $n_de German lines"
        echo "   $corpus: $((n_en)) pairs"
        cat "$tmp/part.en" >>"$tmp/raw.en"
        cat "$tmp/part.de" >>"$tmp/raw.de"
    done
    rm -f "$tmp"/part.{en,de}
    clean "$tmp/raw.en" "$tmp/raw.de" "$tmp/train.en" "$tmp/train.de" 250 1.5
    mv "$tmp/train.en" "$DIR/train.en"
    mv "$tmp/train.de" "$DIR/train.de"
    finish train
    rm -rf "$tmp"
fi

# -- 3. dev (newstest2013) and test (newstest2014) from sacrebleu ------------------------------------------------------
if step devtest "${DEVTEST_OUT[@]}"; then
    tmp=$WORK/tmp
    rm -rf "$tmp"
    mkdir -p "$tmp"
    "$SACREBLEU" -t wmt13 -l en-de --echo src >"$tmp/dev.en"
    "$SACREBLEU" -t wmt13 -l en-de --echo ref >"$tmp/dev.de"
    "$SACREBLEU" -t "$TEST_SET" -l en-de --echo src >"$tmp/test.en"
    "$SACREBLEU" -t "$TEST_SET" -l en-de --echo ref >"$tmp/test.de"
    for f in dev.en dev.de test.en test.de; do
        [[ -s $tmp/$f ]] || die "sacrebleu wrote nothing for $f"
    done
    [[ $(wc -l <"$tmp/dev.en") -eq $(wc -l <"$tmp/dev.de") ]] || die "dev: source and reference differ in length"
    [[ $(wc -l <"$tmp/test.en") -eq $(wc -l <"$tmp/test.de") ]] || die "test: source and reference differ in length"
    for f in dev.en dev.de test.en test.de; do
        mv "$tmp/$f" "$DIR/$f"
    done
    finish devtest
    rm -rf "$tmp"
fi

# -- 4. the joint SentencePiece model ----------------------------------------------------------------------------------
# 2M sentences sampled from both sides; coverage 0.9999 keeps the rare scripts of Common Crawl's noise out of the
# vocabulary (they become <unk>).
if step tokenizer "${SPM_OUT[@]}"; then
    "$SEQTOOL" tokenizer train -i "$DIR/train.en" -i "$DIR/train.de" --vocab-size "$VOCAB_SIZE" --type bpe \
        --character-coverage 0.9999 --input-sentence-size 2000000 -o "$DIR/spm"
    finish tokenizer
fi

echo
echo "WMT14 en-de in $DIR (lines):"
wc -l "$DIR"/train.en "$DIR"/dev.en "$DIR"/test.en | sed 's/^/  /'
echo "next:  seqtool train recipes/wmt14-en-de/transformer-base.yaml --run-dir runs/wmt14-en-de-base"
