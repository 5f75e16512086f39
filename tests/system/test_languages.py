"""A model with target-language tags learns what each tag asks for, through the real `seqtool train` → `translate`.

Two "languages" over the same sources (the ten one-letter words of test_learn.py): `rv` is the reversal, `cp` the
copy. The sources of both corpora are the same sentences, so only the tag tells the model which output is wanted:
`translate --tgt-lang rv` must reverse and `--tgt-lang cp` must copy the 200 held-out test sequences, with the tag
on either side (data.tag_side).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.system.test_learn import finish, seqtool, write_corpus


# the target side runs in make test-slow: the source side covers the mechanism in make test (8-minute budget)
@pytest.fixture(scope="module", params=["source", pytest.param("target", marks=pytest.mark.slow)])
def tagged_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Path]]:
    """The tags in front of the sources (data.tag_side: source) or as the first target token (target)."""
    root = tmp_path_factory.mktemp(f"tags-{request.param}")
    corpus = write_corpus(root)
    src, rev = corpus["train.src"], corpus["train.tgt"]
    config = {
        "data": {
            "train": [
                {"name": "reverse", "src": str(src), "tgt": str(rev), "tgt_lang": "rv"},
                {"name": "copy", "src": str(src), "tgt": str(src), "tgt_lang": "cp"},
            ],
            "dev": [
                {"name": "reverse", "src": str(corpus["dev.src"]), "tgt": str(corpus["dev.tgt"]), "tgt_lang": "rv"},
                {"name": "copy", "src": str(corpus["dev.src"]), "tgt": str(corpus["dev.src"]), "tgt_lang": "cp"},
            ],
            "workers": 1,
            "tag_side": request.param,
        },
        "tokenizer": {"vocab_size": 27},  # the 25 pieces of test_learn.py and the two tags
        "model": {"kind": "transformer", "d_model": 64, "heads": 4, "ffn_dim": 128, "encoder_layers": 2,
                  "decoder_layers": 2, "dropout": 0.0, "attention_dropout": 0.0},
        "train": {"max_steps": 450, "eval_every": 450, "log_every": 50, "batch_tokens": 500, "lr": 5e-3,
                  "schedule": "linear", "warmup": 50, "label_smoothing": 0.0, "threads": 1},
        "decode": {"beam": 5, "max_len_a": 1.0, "max_len_b": 2},
    }  # fmt: skip
    path = root / "tags.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    finish(seqtool("train", str(path), "--run-dir", str(root / "run")))
    return root / "run", corpus


def test_the_tag_chooses_the_output(tagged_run: tuple[Path, dict[str, Path]]) -> None:
    run, corpus = tagged_run
    sources = corpus["test.src"].read_text(encoding="utf-8").splitlines()
    procs = {
        lang: seqtool("translate", str(run), "-i", str(corpus["test.src"]), "--threads", "1", "--tgt-lang", lang)
        for lang in ("rv", "cp")
    }
    for lang, proc in procs.items():
        hyps = finish(proc).splitlines()
        refs = [" ".join(s.split()[::-1]) if lang == "rv" else s for s in sources]
        wrong = [(h, r) for h, r in zip(hyps, refs, strict=True) if h != r]
        # the target-side tag learns a little slower here (3 % wrong at 450 steps); without a working tag half is wrong
        allowed = 0.02 if "source" in run.parent.name else 0.05
        assert len(hyps) == len(refs) and len(wrong) <= allowed * len(refs), f"{lang}: {len(wrong)} wrong: {wrong[:5]}"


def test_dev_bleu_per_language_in_metrics_and_info(tagged_run: tuple[Path, dict[str, Path]]) -> None:
    run, _ = tagged_run
    info = finish(seqtool("info", str(run)))
    assert re.search(r"^languages +cp, rv \(translate --tgt-lang\)$", info, re.M)
    corpus_line = r"^corpus reverse +20,000 of 20,000 pairs kept; weight 1: 50% of the batches, 5\d\.\d% of"
    assert re.search(corpus_line, info, re.M)
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    # a working tag: both near 100 (reverse 94.2 on an AMX Xeon, >95 on an AMD EPYC: fp32 kernels differ by CPU);
    # a tag the model ignores leaves one language half wrong, far below 90
    assert last["type"] == "eval" and last["dev_bleu.reverse"] > 90 and last["dev_bleu.copy"] > 90
    assert last["dev_bleu"] == pytest.approx((last["dev_bleu.reverse"] + last["dev_bleu.copy"]) / 2)
