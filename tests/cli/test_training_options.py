"""Training options and what reads a run: bf16 (or its fallback), `average` and `translate --checkpoint averaged`,
`attention --layer/--head`, `--init-from`, separate vocabularies, `max_minutes`, SIGTERM and resume.

One tiny Transformer run (2 decoder layers, 10 steps, step checkpoints at 5 and 10, train.precision bf16) is shared
by every test that only reads a run; the others need a run of their own and keep it as short as their point allows.
"""

from __future__ import annotations

import base64
import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import yaml
from typer.testing import CliRunner

from seqtool.checkpoint import load_checkpoint
from seqtool.cli import app
from seqtool.config import Config
from seqtool.decode.search import SearchConfig
from seqtool.errors import SeqtoolError
from seqtool.runtime import bf16_supported
from tests.cli.helpers import write_config
from tests.cli.test_cli import seqtool

SENTENCE = "Open the file"
BF16_FALLBACK = "bf16 is not supported on this cpu device: training in fp32"


def invoke(*args: str) -> tuple[int, str, str, BaseException | None]:
    """A command in this process (no torch import per call): exit code, stdout, stderr, the exception if any."""
    result = CliRunner().invoke(app, list(args))
    exception = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.stdout, result.stderr, exception


def records(run: Path, kind: str = "train") -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def logged_steps(run: Path) -> int:
    """Training steps logged so far by a running process (a line being written is not counted)."""
    path = run / "metrics.jsonl"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return sum(1 for line in text.split("\n")[:-1] if '"type": "train"' in line)


def greedy(cfg: Config) -> SearchConfig:
    """The search `translate --beam 1` runs with this config."""
    dc = cfg.decode
    return SearchConfig(
        beam=1, nbest=1, length_penalty=dc.length_penalty, max_len_a=dc.max_len_a, max_len_b=dc.max_len_b
    )


def model_state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("options")


@pytest.fixture(scope="module")
def shared(tiny_corpus: dict[str, Path], root: Path) -> Path:
    """The shared run: 10 steps of a 1+2-layer, 2-head tiny Transformer with train.precision bf16 on the CPU."""
    config = write_config(
        root / "shared.yaml", tiny_corpus, "transformer",
        max_steps=10, eval_every=10, log_every=1, save_every=5, warmup=2, precision="bf16", device="cpu",
    )  # fmt: skip
    result = seqtool("train", str(config), "--run-dir", str(root / "shared"), "--set", "model.decoder_layers=2")
    assert result.returncode == 0, result.stderr
    return root / "shared"


# ---------------------------------------------------------------------------------------------------------------------
# bf16


def test_bf16_trains_or_falls_back_to_fp32_with_a_message(shared: Path, tiny_corpus: dict[str, Path]) -> None:
    """Where the CPU has bf16 the run trains in it; where not (AVX2-only CPUs) it says so and trains in fp32.

    Either way: a finite loss at every step, and checkpoints in float32 that translate loads.
    """
    log = (shared / "train.log").read_text(encoding="utf-8")
    assert yaml.safe_load((shared / "config.yaml").read_text())["train"]["precision"] == "bf16"  # what was asked
    if bf16_supported(torch.device("cpu")):
        assert "device cpu, bf16" in log and BF16_FALLBACK not in log
    else:
        assert BF16_FALLBACK in log and "device cpu, fp32" in log
        assert log.count(BF16_FALLBACK) == 1  # one message, not one per step
    train = records(shared)
    assert [r["step"] for r in train] == list(range(1, 11))
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
    assert train[-1]["loss"] < train[0]["loss"]  # it learns at all
    assert all(math.isfinite(r["dev_loss"]) for r in records(shared, "eval"))
    for name in ("last", "best", "step_5", "step_10"):
        state = model_state(shared / "checkpoints" / f"{name}.pt")
        assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point()), name
        assert all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()), name
    code, out, _, exc = invoke(
        "translate", str(shared), "-i", str(tiny_corpus["test.en"]), "--checkpoint", "last", "--beam", "1",
        "--threads", "1",
    )  # fmt: skip
    assert code == 0 and exc is None, exc
    assert len(out.split("\n")) == 31 and out.endswith("\n")


# ---------------------------------------------------------------------------------------------------------------------
# average, translate --checkpoint averaged


@pytest.fixture(scope="module")
def averaged(shared: Path) -> Path:
    code, _, err, exc = invoke("average", str(shared), "--last", "2")
    assert code == 0 and exc is None, exc
    target = shared / "checkpoints" / "averaged.pt"
    assert "step_5.pt, step_10.pt" in err and str(target) in err
    return target


def test_average_of_two_checkpoints_is_the_mean_of_their_tensors(shared: Path, averaged: Path) -> None:
    a = model_state(shared / "checkpoints" / "step_5.pt")
    b = model_state(shared / "checkpoints" / "step_10.pt")
    state = load_checkpoint(averaged)
    mean = state["model"]
    assert set(mean) == set(a) == set(b)
    changed = 0
    for key in a:
        assert mean[key].dtype == a[key].dtype and mean[key].shape == a[key].shape, key
        if a[key].is_floating_point():
            torch.testing.assert_close(mean[key], (a[key].double() + b[key].double()).div(2).float(), rtol=0, atol=1e-7)
            changed += not torch.equal(a[key], b[key])
        else:
            assert torch.equal(mean[key], a[key]), key
    assert changed > len(a) // 2, "the two checkpoints are (nearly) the same: the test would prove nothing"
    assert state["step"] == 10 and state["averaged"] == ["step_5.pt", "step_10.pt"]
    assert "optimizer" not in state  # weights only: not a checkpoint to resume from
    # the default output exists now: a second run refuses to overwrite it
    code, _, _, exc = invoke("average", str(shared), "--last", "2")
    assert code != 0 and isinstance(exc, SeqtoolError) and "exists" in exc.message


def test_translate_checkpoint_averaged_uses_the_averaged_weights(
    shared: Path, averaged: Path, tiny_corpus: dict[str, Path]
) -> None:
    def translate(checkpoint: str) -> list[str]:
        code, out, _, exc = invoke(
            "translate", str(shared), "-i", str(tiny_corpus["test.en"]), "--checkpoint", checkpoint,
            "--beam", "1", "--quantize", "none", "--scores", "--threads", "1",
        )  # fmt: skip
        assert code == 0 and exc is None, exc
        return out.split("\n")

    by_name = translate("averaged")
    assert len(by_name) == 31 and by_name[-1] == ""  # one line per input line
    assert all("\t" in line for line in by_name[:-1])  # text<TAB>log-probability
    assert by_name == translate(str(averaged))  # --checkpoint averaged is checkpoints/averaged.pt
    # and not one of the checkpoints it averaged (the log-probabilities tell them apart)
    assert by_name != translate("step_10") and by_name != translate("step_5")


# ---------------------------------------------------------------------------------------------------------------------
# attention --layer/--head


def svg_title_and_image(path: Path) -> tuple[str, bytes]:
    """The title comment matplotlib writes into an SVG, and the heatmap's embedded PNG."""
    text = path.read_text(encoding="utf-8")
    titles = [c for c in re.findall(r"<!-- (.*?) -->", text) if "decoder layer" in c]
    assert len(titles) == 1, titles
    images = re.findall(r'xlink:href="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 2  # the heatmap, then its colour bar
    return titles[0], base64.b64decode(images[0])


def test_attention_layer_and_head_choose_the_weights(shared: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pictures = {}
    for name, flags, title in [
        ("l0h1", ["--layer", "0", "--head", "1"], "decoder layer 1 of 2, head 2 of 2"),
        ("l1h1", ["--layer", "1", "--head", "1"], "decoder layer 2 of 2, head 2 of 2"),
        ("l0h0", ["--layer", "-2", "--head", "0"], "decoder layer 1 of 2, head 1 of 2"),
        ("last", [], "decoder layer 2 of 2, heads averaged"),
    ]:
        out = tmp_path / f"{name}.svg"
        code, stdout, err, exc = invoke("attention", str(shared), SENTENCE, "-o", str(out), "--beam", "1", *flags)
        assert code == 0 and exc is None, exc
        assert len(stdout.splitlines()) == 1 and f"wrote {out}" in err  # the translation on stdout
        got_title, pictures[name] = svg_title_and_image(out)
        assert got_title.endswith(f" — {title}"), got_title
    assert len(set(pictures.values())) == 4, "different layers/heads drew the same heatmap"
    png = tmp_path / "a.png"
    code, _, _, exc = invoke(
        "attention", str(shared), SENTENCE, "--layer", "0", "--head", "1", "-o", str(png), "--beam", "1"
    )
    assert code == 0 and exc is None, exc
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_weights_differ_by_layer_and_head(shared: Path) -> None:
    from seqtool.decode.attention_map import attention_map
    from seqtool.rundir import load_for_inference

    model, tokenizer, cfg, _ = load_for_inference(shared, "last", torch.device("cpu"))
    search = greedy(cfg)

    def weights(layer: int, head: int | None) -> torch.Tensor:
        return torch.tensor(attention_map(model, tokenizer, SENTENCE, search, layer=layer, head=head).weights)

    maps = {(layer, head): weights(layer, head) for layer in (0, 1) for head in (0, 1, None)}
    keys = list(maps)
    for i, first in enumerate(keys):
        for second in keys[i + 1 :]:
            assert not torch.allclose(maps[first], maps[second], atol=1e-4), f"{first} == {second}"
    for layer in (0, 1):  # "heads averaged" is the mean of the heads
        torch.testing.assert_close(maps[(layer, None)], (maps[(layer, 0)] + maps[(layer, 1)]) / 2)
    torch.testing.assert_close(weights(-1, 1), maps[(1, 1)])  # negative layers count from the last
    torch.testing.assert_close(weights(-2, 0), maps[(0, 0)])


@pytest.mark.parametrize(("flag", "value"), [("--layer", "2"), ("--layer", "-3"), ("--head", "2")])
def test_attention_out_of_range_layer_or_head_is_an_error(shared: Path, tmp_path: Path, flag: str, value: str) -> None:
    """The run has 2 decoder layers (0, 1 or -1, -2) of 2 heads (0, 1): anything else is a user error."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "a.png"
    code, _, _, exc = invoke("attention", str(shared), SENTENCE, "-o", str(out), "--beam", "1", flag, value)
    assert isinstance(exc, SeqtoolError), f"{flag} {value}: exit {code}, no error (wrapped around to another one?)"
    # what `main` prints as one "error: ..." line with exit code 2 (a user error, not a crash)
    assert exc.exit_code == 2 and "\n" not in exc.message
    assert flag[2:] in exc.message and value in exc.message, exc.message
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------------
# --init-from


def test_init_from_starts_a_new_run_from_the_checkpoint_weights(shared: Path, root: Path) -> None:
    """With train.lr 0 no update changes a weight, so the new run's weights must be the source's, exactly; its step
    counter, optimizer state and schedule start from 0 (weights only, unlike --resume)."""
    source = shared / "checkpoints" / "last.pt"
    run = root / "init"
    result = seqtool(
        "train", str(root / "shared.yaml"), "--run-dir", str(run), "--init-from", str(source),
        "--set", "model.decoder_layers=2", "--set", f"tokenizer.model={shared / 'spm.model'}",
        "--set", "train.lr=0", "--set", "train.max_steps=3", "--set", "train.eval_every=3",
        "--set", "train.save_every=0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"initialised the weights from {source}" in (run / "train.log").read_text(encoding="utf-8")
    src, new = load_checkpoint(source), load_checkpoint(run / "checkpoints" / "last.pt")
    assert src["step"] == 10 and new["step"] == 3
    assert [r["step"] for r in records(run)] == [1, 2, 3]
    assert set(new["model"]) == set(src["model"])
    differ = [k for k in src["model"] if not torch.equal(src["model"][k], new["model"][k])]
    assert not differ, f"not the source's weights: {differ[:5]}"
    adam_steps = {float(s["step"]) for s in new["optimizer"]["state"].values()}
    assert adam_steps == {3.0}  # a fresh optimizer, not the source's (which had taken 10 steps)
    assert new["scheduler"]["last_epoch"] == 3
    # not a same-seed fresh initialisation that happens to match: the source's weights moved while it trained
    earlier = model_state(shared / "checkpoints" / "step_5.pt")
    assert any(not torch.equal(earlier[k], new["model"][k]) for k in earlier)


# ---------------------------------------------------------------------------------------------------------------------
# separate vocabularies


def test_separate_vocabularies(tiny_corpus: dict[str, Path], root: Path) -> None:
    from seqtool.decode.translate import clean_line, translate_ids
    from seqtool.rundir import load_for_inference
    from seqtool.tokenizer import TokenizerSpec, train_sentencepiece

    sizes = {"src": 300, "tgt": 500}
    files = {"src": tiny_corpus["train.en"], "tgt": tiny_corpus["train.de"]}
    models = {
        side: train_sentencepiece([files[side]], root / f"own.{side}", TokenizerSpec(n)) for side, n in sizes.items()
    }
    config = write_config(root / "separate.yaml", tiny_corpus, "transformer", max_steps=4, eval_every=4)
    data = yaml.safe_load(config.read_text())
    data["tokenizer"] = {"joint": False, "src_model": str(models["src"]), "tgt_model": str(models["tgt"])}
    data["model"]["share_embeddings"] = False
    config.write_text(yaml.safe_dump(data))
    run = root / "separate"
    result = seqtool("train", str(config), "--run-dir", str(run))
    assert result.returncode == 0, result.stderr

    assert not (run / "spm.model").exists()
    processors = {side: spm.SentencePieceProcessor(model_file=str(run / f"spm.{side}.model")) for side in sizes}
    assert {side: p.get_piece_size() for side, p in processors.items()} == sizes
    state = model_state(run / "checkpoints" / "last.pt")
    assert state["src_embed.weight"].shape == (300, 32)
    assert state["tgt_embed.weight"].shape == (500, 32)

    code, out, _, exc = invoke(
        "translate", str(run), "-i", str(tiny_corpus["test.en"]), "--beam", "1", "--quantize", "none",
        "--threads", "1",
    )  # fmt: skip
    assert code == 0 and exc is None, exc
    cli_lines = out.split("\n")
    assert len(cli_lines) == 31 and cli_lines[-1] == ""
    # the same search in the library, decoded with spm.tgt.model by hand: the command's output, line for line
    model, _, cfg, _ = load_for_inference(run, "best", torch.device("cpu"))
    lines = tiny_corpus["test.en"].read_text(encoding="utf-8").splitlines()
    src_ids = [processors["src"].encode(clean_line(line)) for line in lines]
    hyps = translate_ids(model, src_ids, greedy(cfg))
    out_ids = [h[0].tokens if h else [] for h in hyps]
    assert any(out_ids), "every translation is empty: the comparison would prove nothing"
    assert cli_lines[:-1] == [clean_line(processors["tgt"].decode(ids)) for ids in out_ids]
    assert any(max(ids, default=0) >= 300 for ids in out_ids) or any(
        processors["src"].decode(ids) != processors["tgt"].decode(ids) for ids in out_ids
    ), "the source model would decode the same text: the comparison cannot tell the two models apart"


# ---------------------------------------------------------------------------------------------------------------------
# max_minutes


@pytest.mark.slow  # about 25 s: keeps make test under 8 minutes
def test_max_minutes_stops_the_run_by_the_clock(tiny_corpus: dict[str, Path], root: Path) -> None:
    config = write_config(
        root / "clock.yaml", tiny_corpus, "transformer",
        max_steps=1_000_000, max_minutes=0.02, eval_every=1_000_000, log_every=5,
    )  # fmt: skip
    run = root / "clock"
    started = time.monotonic()
    result = subprocess.run(  # a run that ignored its budget would train 1M steps: fail after 2 minutes instead
        [sys.executable, "-m", "seqtool", "train", str(config), "--run-dir", str(run), "--probe"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    found = re.search(r"finished at step (\d+) \(max_minutes\)", (run / "train.log").read_text(encoding="utf-8"))
    assert found, (run / "train.log").read_text(encoding="utf-8")
    steps = int(found.group(1))
    assert 0 < steps < 1_000_000
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == steps
    assert f"done: {steps} steps" in result.stderr
    # --probe: the run's matmul GFLOP/s and its fraction of the probe's, in the summary line and in train.log
    assert re.search(r"[\d,]+ GFLOP/s in matmuls \(\d+% of the probe's [\d,]+\)", result.stderr), result.stderr
    assert "% of the fp32 matmul probe)" in (run / "train.log").read_text(encoding="utf-8")
    train = records(run)
    assert train and train[-1]["elapsed_s"] <= 0.02 * 60 + 5.0  # the training itself kept to its 1.2 s budget
    assert [r["step"] for r in records(run, "eval")] == [steps]  # validated once, at the end
    assert wall < 90, f"a 1.2-second budget took {wall:.0f} s in all"
    # the budget is the run's, not the session's: resuming a run that spent it trains nothing and says why
    again = subprocess.run(
        [sys.executable, "-m", "seqtool", "train", "--resume", str(run)], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == steps
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "is spent; to train on, resume with a larger one, e.g. --set train.max_minutes=0.04" in log


# ---------------------------------------------------------------------------------------------------------------------
# SIGTERM on a single process


def test_sigterm_saves_and_resume_finishes(tiny_corpus: dict[str, Path], root: Path) -> None:
    config = write_config(root / "term.yaml", tiny_corpus, "transformer", max_steps=40, eval_every=40, log_every=1)
    run = root / "term"
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqtool", "train", str(config), "--run-dir", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while logged_steps(run) < 3:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "timed out waiting for training steps"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "Resume with:" in err  # (the terminal may wrap the line; train.log has it whole)
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")
    assert 3 <= stopped["step"] < 40 and "optimizer" in stopped  # a full checkpoint, to resume from
    log = (run / "train.log").read_text(encoding="utf-8")
    last = run / "checkpoints" / "last.pt"
    assert f"interrupted at step {stopped['step']}; saved {last}. Resume with: seqtool train --resume {run}" in log
    assert "finished at step" not in log

    resumed = seqtool("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 40
    log = (run / "train.log").read_text(encoding="utf-8")
    assert f"resumed from {last} at step {stopped['step']}" in log
    assert "finished at step 40 (max_steps)" in log
    assert [r["step"] for r in records(run)] == list(range(1, 41))  # every step once, none lost or repeated
