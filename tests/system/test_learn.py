"""Each model family learns a toy task through the real pipeline, to at least 99% exact match on held-out input.

The task: reverse a sequence of 2 to 6 words drawn from ten one-letter words, written as text files. `seqtool train`
trains the tokenizer (25 pieces: the specials, the characters and one piece per word) and the model; then
`seqtool translate` decodes 200 test sequences that never occur in the training data: with beam 5 and greedily,
in int8 (the default for a Transformer on an AVX-512 CPU) and in fp32, and with the CTranslate2 engine after
`seqtool export`.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

WORDS = list("abcdefghij")  # ten one-letter words
TRAIN_PAIRS = 20_000  # with 4,000 pairs seen more often, the Transformer got 198 of 200 for one seed in two
HELD_OUT = 220  # 20 dev + 200 test sequences, none of them in the training data

# model, steps, peak learning rate: small models and budgets measured to learn the task, 200 of 200 test sequences
# exact, also with three other seeds each (the Transformer needs 450 steps: with 350, one seed of two got 198 of 200;
# the LSTM with Luong attention instead of Bahdanau stayed at 2 of 200 for one seed in three)
COMMON = {"dropout": 0.0}
MODELS: dict[str, tuple[dict[str, Any], int, float]] = {
    "transformer": (
        {"kind": "transformer", "d_model": 64, "heads": 4, "ffn_dim": 128, "encoder_layers": 2, "decoder_layers": 2,
         "attention_dropout": 0.0, **COMMON},
        450,
        5e-3,
    ),
    "gru": ({"kind": "rnn", "cell": "gru", "embed_dim": 32, "hidden_size": 64, "attention": "luong", **COMMON},
            250, 1e-2),
    "lstm": ({"kind": "rnn", "cell": "lstm", "embed_dim": 32, "hidden_size": 64, "attention": "bahdanau", **COMMON},
             250, 1e-2),
}  # fmt: skip


def write_corpus(root: Path) -> dict[str, Path]:
    """train/dev/test .src/.tgt files: word sequences and their reversals; dev and test are absent from train."""
    rng = random.Random(0)

    def sequence() -> tuple[str, ...]:
        return tuple(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))

    held_out: set[tuple[str, ...]] = set()
    while len(held_out) < HELD_OUT:
        held_out.add(sequence())
    dev_test = sorted(held_out)
    rng.shuffle(dev_test)
    train: list[tuple[str, ...]] = []
    while len(train) < TRAIN_PAIRS:
        seq = sequence()
        if seq not in held_out:
            train.append(seq)
    files = {}
    for split, rows in (("train", train), ("dev", dev_test[:20]), ("test", dev_test[20:])):
        for side, order in (("src", 1), ("tgt", -1)):
            files[f"{split}.{side}"] = path = root / f"{split}.{side}"
            path.write_text("".join(" ".join(row[::order]) + "\n" for row in rows), encoding="utf-8")
    return files


def write_config(path: Path, corpus: dict[str, Path], name: str) -> Path:
    model, steps, lr = MODELS[name]
    config = {
        "data": {
            "train_src": str(corpus["train.src"]),
            "train_tgt": str(corpus["train.tgt"]),
            "dev_src": str(corpus["dev.src"]),
            "dev_tgt": str(corpus["dev.tgt"]),
            "workers": 1,
        },
        "tokenizer": {"vocab_size": 25},
        "model": model,
        "train": {
            "max_steps": steps,
            "eval_every": steps,
            "log_every": 50,
            "batch_tokens": 500,
            "lr": lr,
            "schedule": "linear",  # decays to 0 at max_steps: the model settles
            "warmup": 50,
            "label_smoothing": 0.0,
            "threads": 1,
        },
        "decode": {"beam": 5, "max_len_a": 1.0, "max_len_b": 2},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def seqtool(*args: str) -> subprocess.Popen[str]:
    """Start the real CLI in a fresh process."""
    return subprocess.Popen(
        [sys.executable, "-m", "seqtool", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str]) -> str:
    """Wait for a process started by `seqtool`; its stdout, after checking that it succeeded."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("reverse"))


@pytest.fixture(scope="module")
def runs(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three models trained by `seqtool train`, at the same time (one thread each)."""
    root = tmp_path_factory.mktemp("runs")
    procs = {
        name: seqtool("train", str(write_config(root / f"{name}.yaml", corpus, name)), "--run-dir", str(root / name))
        for name in MODELS
    }
    for proc in procs.values():
        finish(proc)
    return {name: root / name for name in MODELS}


def test_the_test_sequences_never_occur_in_training(corpus: dict[str, Path]) -> None:
    train = set(corpus["train.src"].read_text(encoding="utf-8").splitlines())
    test = corpus["test.src"].read_text(encoding="utf-8").splitlines()
    dev = corpus["dev.src"].read_text(encoding="utf-8").splitlines()
    assert len(set(test)) == len(test) == 200 and len(dev) == 20
    assert not train & set(test) and not train & set(dev) and not set(dev) & set(test)
    assert {len(line.split()) for line in test} == {2, 3, 4, 5, 6}


@pytest.mark.parametrize("name", list(MODELS))
def test_learns_to_reverse_through_train_and_translate(
    name: str, runs: dict[str, Path], corpus: dict[str, Path]
) -> None:
    run = runs[name]
    variants = {"beam 5": ["--beam", "5"], "greedy": ["--beam", "1"]}  # auto: int8 for a Transformer on AVX-512
    if name == "transformer":
        variants |= {"beam 5, int8": ["--beam", "5", "--quantize", "int8"]}
        variants |= {"beam 5, fp32": ["--beam", "5", "--quantize", "none"]}
        finish(seqtool("export", str(run), "--format", "ctranslate2"))
        variants |= {"beam 5, CTranslate2": ["--beam", "5", "--engine", "ctranslate2"]}
    procs = {
        label: seqtool("translate", str(run), "-i", str(corpus["test.src"]), "--threads", "1", *args)
        for label, args in variants.items()
    }  # at the same time, one thread each
    refs = corpus["test.tgt"].read_text(encoding="utf-8").splitlines()
    for label, proc in procs.items():
        hyps = finish(proc).splitlines()
        assert len(hyps) == len(refs), label
        wrong = [(h, r) for h, r in zip(hyps, refs, strict=True) if h != r]
        assert len(wrong) <= 0.01 * len(refs), f"{name}, {label}: {len(wrong)} of {len(refs)} wrong: {wrong[:5]}"


@pytest.mark.parametrize("name", list(MODELS))
def test_alignments_of_a_learnt_reversal_are_the_anti_diagonal(
    name: str, runs: dict[str, Path], corpus: dict[str, Path]
) -> None:
    """`translate --align`: word i of n is linked to word n-1-i, for at least 95% of the links."""
    proc = seqtool("translate", str(runs[name]), "-i", str(corpus["test.src"]), "--threads", "1", "--align")
    sources = corpus["test.src"].read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in finish(proc).splitlines()]
    assert len(rows) == len(sources)
    links = anti = 0
    for source, (_, alignment) in zip(sources, rows, strict=True):
        n = len(source.split())
        for pair in alignment.split():
            i, j = map(int, pair.split("-"))
            links += 1
            anti += j == n - 1 - i
    assert links >= sum(len(s.split()) for s in sources)  # every target word has a link
    assert anti >= 0.95 * links, f"{name}: {anti} of {links} links on the anti-diagonal"


def test_score_prefers_the_references_to_shuffled_ones(runs: dict[str, Path], corpus: dict[str, Path]) -> None:
    """`seqtool score` under the learnt Transformer: each test reference far above another sentence's reference."""
    refs = corpus["test.tgt"].read_text(encoding="utf-8").splitlines()
    shuffled = corpus["test.tgt"].with_suffix(".shuffled")
    shuffled.write_text("".join(line + "\n" for line in refs[1:] + refs[:1]), encoding="utf-8")
    averages = []
    for tgt in (corpus["test.tgt"], shuffled):
        args = ("--src", str(corpus["test.src"]), "--tgt", str(tgt), "--normalize", "avg", "--threads", "1")
        rows = [line.split("\t") for line in finish(seqtool("score", str(runs["transformer"]), *args)).splitlines()]
        assert len(rows) == len(refs) and all(row[0] != "NA" for row in rows)
        averages.append(sum(float(row[1]) for row in rows) / len(rows))
    assert averages[0] > -0.1 and averages[1] < averages[0] - 1.0, averages  # per token: near 0 against far below


@pytest.mark.slow
def test_learns_with_subword_sampling_and_word_dropout(corpus: dict[str, Path], tmp_path: Path) -> None:
    """The regularisation levers of issue 18 through the real pipeline: the Transformer trained on sampled
    segmentations (two encodings, one per epoch in turn) with word dropout on both sides still learns the reversal."""
    config = yaml.safe_load(write_config(tmp_path / "c.yaml", corpus, "transformer").read_text())
    config["data"] |= {"subword_alpha": 0.5, "subword_nbest": 4, "subword_copies": 2}
    config["train"] |= {"src_word_dropout": 0.1, "tgt_word_dropout": 0.1, "max_steps": 600, "eval_every": 600}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    finish(seqtool("train", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run")))
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "sampled encoding 2 of 2" in log
    out = finish(seqtool("translate", str(tmp_path / "run"), "-i", str(corpus["test.src"]), "--threads", "1"))
    refs = corpus["test.tgt"].read_text(encoding="utf-8").splitlines()
    hyps = out.splitlines()
    assert len(hyps) == len(refs)
    right = sum(h == r for h, r in zip(hyps, refs, strict=True))
    assert right >= 0.95 * len(refs), f"{right} of {len(refs)} exact"
