"""The real commands end to end on tiny data: tokenizer train -> train -> translate -> eval, and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import yaml

from tests.cli.helpers import write_config


def seqtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "seqtool", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit code 2, one 'error:' line (and maybe a 'hint:' line) ending stderr, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert all(line.startswith("hint: ") for line in lines[errors[0] + 1 :]), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr


@pytest.fixture(scope="module")
def trained_run(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tokenizer train -> train (30 steps of a tiny Transformer) through the real commands."""
    root = tmp_path_factory.mktemp("run")
    result = seqtool(
        "tokenizer", "train", "-i", str(tiny_corpus["train.en"]), "-i", str(tiny_corpus["train.de"]),
        "--vocab-size", "400", "-o", str(root / "spm"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (root / "spm.model").is_file() and (root / "spm.vocab").is_file()
    config = write_config(root / "tiny.yaml", tiny_corpus, "transformer", tokenizer=str(root / "spm.model"))
    result = seqtool("train", str(config), "--run-dir", str(root / "run"))
    assert result.returncode == 0, result.stderr
    (root / "train.stderr").write_text(result.stderr, encoding="utf-8")
    return root / "run"


def test_train_writes_the_run_directory(trained_run: Path, tiny_corpus: dict[str, Path]) -> None:
    for name in (
        "config.yaml",
        "spm.model",
        "metrics.jsonl",
        "train.log",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):
        assert (trained_run / name).is_file(), name
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in evals] == [15, 30]
    assert train[-1]["loss"] < train[0]["loss"]
    assert all(r["tgt_tok_s"] > 0 and r["lr"] > 0 for r in train)
    # the last dev BLEU is sacrebleu's on what greedy decoding of last.pt (saved at that validation) gives for dev
    hyp = seqtool("translate", str(trained_run), "-i", str(tiny_corpus["dev.en"]), "--checkpoint", "last",
                  "--beam", "1", "--quantize", "none")  # fmt: skip
    assert hyp.returncode == 0, hyp.stderr
    refs = tiny_corpus["dev.de"].read_text(encoding="utf-8").splitlines()
    bleu = sacrebleu.corpus_bleu(hyp.stdout.splitlines(), [refs]).score
    assert evals[-1]["dev_bleu"] == pytest.approx(bleu, abs=1e-9) and bleu > 0.0
    # and `seqtool eval` of that output agrees with the dev BLEU training logged, to 0.01
    hyp_file = trained_run.parent / "dev.hyp.de"
    hyp_file.write_text(hyp.stdout, encoding="utf-8")
    scored = seqtool("eval", "--hyp", str(hyp_file), "--ref", str(tiny_corpus["dev.de"]), "--metrics", "bleu", "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["BLEU"]["score"] == pytest.approx(evals[-1]["dev_bleu"], abs=0.01)
    assert evals[-1]["best_bleu"] == max(r["dev_bleu"] for r in evals)
    stored = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert stored["train"]["max_steps"] == 30 and stored["model"]["d_model"] == 32


def test_train_warns_when_the_vocabulary_is_large_for_the_corpus(
    trained_run: Path, tiny_corpus: dict[str, Path]
) -> None:
    words = sum(len(line.split()) for name in ("train.en", "train.de") for line in tiny_corpus[name].open())
    assert words < 400 * 20  # the tiny corpus is far under tokenizer.min_words_per_piece's default
    stderr = (trained_run.parent / "train.stderr").read_text(encoding="utf-8")
    warnings = [line for line in stderr.splitlines() if "training words" in line]
    assert len(warnings) == 1, stderr
    assert f"has 400 pieces for {words:,} training words" in warnings[0] and "What matters on small data" in warnings[0]


def test_translate_keeps_one_line_per_input_line(trained_run: Path) -> None:
    text = "Open file\n\n   \nSave the document as a new file\nClose\n"
    for beam in ("1", "3"):
        result = seqtool("translate", str(trained_run), "--beam", beam, stdin=text)
        assert result.returncode == 0, result.stderr
        out = result.stdout.split("\n")
        assert out[-1] == "" and len(out) - 1 == 5
        assert out[1] == "" and out[2] == ""


def test_translate_files_and_eval(trained_run: Path, tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    hyp = tmp_path / "hyp.de"
    result = seqtool("translate", str(trained_run), "-i", str(tiny_corpus["test.en"]), "-o", str(hyp), "--beam", "2")
    assert result.returncode == 0, result.stderr
    assert len(hyp.read_text(encoding="utf-8").splitlines()) == 30
    again = seqtool("translate", str(trained_run), "-i", str(tiny_corpus["test.en"]), "-o", str(hyp))
    assert_user_error(again, "exists", "--overwrite")

    # the scores are sacrebleu's on the same files: the model's output, and a partly right one (the reference with
    # words dropped from every other line) whose scores depend on every line
    refs = tiny_corpus["test.de"].read_text(encoding="utf-8").splitlines()
    partial = tmp_path / "partial.de"
    partial.write_text("".join((r if i % 2 else " ".join(r.split()[::2])) + "\n" for i, r in enumerate(refs)))
    for path in (hyp, partial):
        hyps = path.read_text(encoding="utf-8").splitlines()
        expected = [sacrebleu.corpus_bleu(hyps, [refs]), sacrebleu.corpus_chrf(hyps, [refs]),
                    sacrebleu.corpus_ter(hyps, [refs])]  # fmt: skip
        result = seqtool("eval", "--hyp", str(path), "--ref", str(tiny_corpus["test.de"]))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(str(expected[0]))  # sacrebleu's rendering: "BLEU = 12.34 56.7/.../... (BP ..."
        assert str(expected[1]) in result.stdout and str(expected[2]) in result.stdout
        assert "signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in result.stdout
        as_json = seqtool("eval", "--hyp", str(path), "--ref", str(tiny_corpus["test.de"]), "--json")
        scores = json.loads(as_json.stdout)
        got = [scores[name]["score"] for name in ("BLEU", "chrF2", "TER")]
        assert got == pytest.approx([e.score for e in expected], abs=1e-4)  # rounded to 4 decimals
    assert 20.0 < expected[0].score < 90.0 and 0.0 < expected[2].score < 50.0  # the partly right one

    result = seqtool("eval", "--hyp", str(tiny_corpus["test.de"]), "--ref", str(tiny_corpus["test.de"]), "--json")
    scores = json.loads(result.stdout)
    assert scores["BLEU"]["score"] == 100.0 and scores["TER"]["score"] == 0.0
    assert scores["chrF2"]["signature"].startswith("nrefs:1")


@pytest.mark.slow  # four runs: about 8 s (make test-slow)
def test_tokenizer_encode_decode_roundtrip(trained_run: Path) -> None:
    model = str(trained_run / "spm.model")
    text = "Open the file\nSave as\n"
    pieces = seqtool("tokenizer", "encode", "-m", model, stdin=text)
    assert pieces.returncode == 0 and "▁" in pieces.stdout
    back = seqtool("tokenizer", "decode", "-m", model, stdin=pieces.stdout)
    assert back.stdout == text
    ids = seqtool("tokenizer", "encode", "-m", model, "--ids", stdin=text)
    assert seqtool("tokenizer", "decode", "-m", model, "--ids", stdin=ids.stdout).stdout == text


def test_resume_continues_and_refuses_to_clobber(
    trained_run: Path, tiny_corpus: dict[str, Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "again.yaml", tiny_corpus, "transformer")
    assert_user_error(seqtool("train", str(config), "--run-dir", str(trained_run)), "already holds a run", "--resume")
    result = seqtool("train", "--resume", str(trained_run), "--set", "train.max_steps=35")
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr and "train.max_steps: 30 -> 35" in result.stderr
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["type"] == "eval" and records[-1]["step"] == 35


# the LSTM (make test-slow): tests/system/test_learn.py trains and translates one in the default run
@pytest.mark.parametrize("model", ["gru", pytest.param("lstm", marks=pytest.mark.slow)])
def test_recurrent_models_train_and_translate(model: str, tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    import torch

    from seqtool.data.batching import pad_sequences
    from seqtool.decode.search import SearchConfig, search
    from seqtool.rundir import load_for_inference

    config = write_config(tmp_path / f"{model}.yaml", tiny_corpus, model, max_steps=10, eval_every=10)
    run = tmp_path / "run"
    result = seqtool("train", str(config), "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    assert "joint" not in result.stderr
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 10
    lines = ["Open file", "", "Close the window", "Save all documents"]
    stdin = "".join(line + "\n" for line in lines)
    # what the library's search gives on the run's checkpoint, for beam 2 and greedy
    net, tokenizer, cfg, _ = load_for_inference(run)
    assert cfg.model.kind == "rnn" and cfg.model.cell == model
    src = pad_sequences(tokenizer.src.encode(lines), tokenizer.specials.pad, suffix=tokenizer.specials.eos)
    for beam in (2, 1):
        search_cfg = SearchConfig(beam=beam, nbest=1, length_penalty=cfg.decode.length_penalty,
                                  max_len_a=cfg.decode.max_len_a, max_len_b=cfg.decode.max_len_b,
                                  stop=cfg.decode.stop)  # fmt: skip
        with torch.inference_mode():
            hyps = search(net, src, search_cfg)
        expected = [text if line else "" for text, line in zip(
            tokenizer.tgt.decode([h[0].tokens for h in hyps]), lines, strict=True)]  # fmt: skip
        out = seqtool("translate", str(run), "--beam", str(beam), stdin=stdin)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "".join(text + "\n" for text in expected), f"beam {beam}"
        assert [bool(text) for text in expected] == [True, False, True, True]  # something for each non-empty line


# -- bad input: one line on stderr, exit code 2, no traceback ----------------------------------------------------------


def test_missing_files(tmp_path: Path) -> None:
    assert_user_error(seqtool("eval", "--hyp", str(tmp_path / "nope"), "--ref", str(tmp_path / "nope2")), "not found")
    assert_user_error(seqtool("train", str(tmp_path / "missing.yaml")), "not found")
    assert_user_error(seqtool("tokenizer", "encode", "-m", str(tmp_path / "x.model"), stdin="a\n"), "not found")


def test_line_count_mismatch(tmp_path: Path) -> None:
    (tmp_path / "h").write_text("a\nb\nc\n")
    (tmp_path / "r").write_text("a\nb\n")
    assert_user_error(seqtool("eval", "--hyp", str(tmp_path / "h"), "--ref", str(tmp_path / "r")), "3 lines", "has 2")


def test_training_corpus_line_count_mismatch(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    short = tmp_path / "short.de"
    short.write_text(
        "".join(tiny_corpus["train.de"].read_text(encoding="utf-8").splitlines(True)[:-3]), encoding="utf-8"
    )
    config = write_config(tmp_path / "c.yaml", tiny_corpus, "transformer")
    raw = yaml.safe_load(config.read_text())
    raw["data"]["train_tgt"] = str(short)
    config.write_text(yaml.safe_dump(raw))
    assert_user_error(
        seqtool("train", str(config), "--run-dir", str(tmp_path / "run")), "600 lines", "597", "short.de", "train.en"
    )
    assert not (tmp_path / "run").exists()  # nothing written for a run that could not start


def test_vocab_too_large_is_plain_and_leaves_no_run(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", tiny_corpus, "transformer")
    result = seqtool("train", str(config), "--run-dir", str(tmp_path / "run"), "--set", "tokenizer.vocab_size=50000")
    assert_user_error(result, "too large for this data", "at most")
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow  # three runs: about 7 s; tests/unit/test_config.py checks the messages (make test-slow)
def test_unknown_and_mistyped_config_keys(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  kind: transformer\n  d_modle: 64\n")
    assert_user_error(seqtool("train", str(config)), "model.d_modle", "bad.yaml:3", "did you mean 'd_model'")
    config.write_text("train:\n  max_steps: lots\n")
    assert_user_error(seqtool("train", str(config)), "train.max_steps", "expected an integer")
    config.write_text("train: {}\n")
    assert_user_error(seqtool("train", str(config), "--set", "train.max_stepz=3"), "train.max_stepz", "--set")


@pytest.mark.slow  # three runs: about 6 s (make test-slow)
def test_run_dir_without_checkpoint(tmp_path: Path) -> None:
    assert_user_error(seqtool("translate", str(tmp_path / "nothing"), stdin="a\n"), "run directory not found")
    (tmp_path / "run").mkdir()
    assert_user_error(seqtool("translate", str(tmp_path / "run"), stdin="a\n"), "not a seqtool run directory")
    (tmp_path / "run" / "config.yaml").write_text("model: {kind: transformer}\n")
    (tmp_path / "run" / "spm.model").write_bytes(b"")
    assert_user_error(seqtool("translate", str(tmp_path / "run"), stdin="a\n"), "has no checkpoint", "train first")


def test_help_and_version() -> None:
    result = seqtool("--help")
    assert result.returncode == 0
    for command in ("train", "translate", "eval", "tokenizer"):
        assert command in result.stdout
    assert seqtool("--version").stdout.startswith("seqtool ")
    for command in (["train"], ["translate"], ["eval"], ["tokenizer", "train"]):
        assert "Example:" in seqtool(*command, "--help").stdout


def test_beam_search_on_the_trained_model(trained_run: Path, tiny_corpus: dict[str, Path]) -> None:
    """On a real trained Transformer: beam 1 == greedy, and beam 4 finds higher model scores than greedy."""
    import torch

    from seqtool.data.batching import pad_sequences
    from seqtool.decode.search import SearchConfig, greedy_search, search
    from seqtool.rundir import load_for_inference

    model, tokenizer, _, _ = load_for_inference(trained_run, "last")
    lines = tiny_corpus["test.en"].read_text(encoding="utf-8").splitlines()
    src = pad_sequences(tokenizer.src.encode(lines), tokenizer.specials.pad, suffix=tokenizer.specials.eos)
    with torch.inference_mode():
        greedy = greedy_search(model, src, 1.0, 5)
        beam1 = search(model, src, SearchConfig(beam=1, nbest=1, length_penalty=0.0, max_len_a=1.0, max_len_b=5))
        beam4 = search(model, src, SearchConfig(beam=4, nbest=1, length_penalty=0.0, max_len_a=1.0, max_len_b=5))
    assert [h[0].tokens for h in beam1] == [h[0].tokens for h in greedy]
    better_or_equal = sum(b[0].log_prob >= g[0].log_prob - 1e-4 for b, g in zip(beam4, greedy, strict=True))
    assert better_or_equal >= 0.9 * len(lines)
    assert sum(b[0].log_prob for b in beam4) > sum(g[0].log_prob for g in greedy)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    quiet = seqtool("eval", "--hyp", str(tmp_path / "nope"), "--ref", str(tmp_path / "nope"))
    loud = seqtool("--debug", "eval", "--hyp", str(tmp_path / "nope"), "--ref", str(tmp_path / "nope"))
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr and "DataError" in loud.stderr
    assert loud.returncode != 0


@pytest.mark.slow  # about 8 s (make test-slow)
def test_prepare_builds_the_cache_that_train_reuses(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    config = write_config(tmp_path / "p.yaml", tiny_corpus, "transformer", tokenizer=str(tmp_path / "spm.model"),
                          max_steps=2, eval_every=2)  # fmt: skip
    cache = tmp_path / "cache"
    prepared = seqtool("prepare", str(config), "--set", f"data.cache_dir={cache}", "--run-dir", str(tmp_path / "r"))
    assert prepared.returncode == 0, prepared.stderr
    assert "ready: 600 training pairs" in prepared.stderr and (tmp_path / "spm.model").is_file()
    built = sorted(cache.glob("corpus-*"))
    assert len(built) == 1 and (built[0] / "manifest.json").is_file()
    trained = seqtool("train", str(config), "--set", f"data.cache_dir={cache}", "--run-dir", str(tmp_path / "r"))
    assert trained.returncode == 0, trained.stderr
    assert "encoded cache reused" in (tmp_path / "r" / "train.log").read_text(encoding="utf-8")
    assert sorted(cache.glob("corpus-*")) == built
    unnamed = write_config(tmp_path / "u.yaml", tiny_corpus, "transformer")
    assert_user_error(seqtool("prepare", str(unnamed)), "tokenizer.model")
