"""Bad inputs and faults around training: corpora, checkpoints, NaN losses, a full disk."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from seqtool import atomic as atomic_module
from seqtool.checkpoint import load_checkpoint, save_checkpoint
from seqtool.config import RNNConfig
from seqtool.errors import CheckpointError, DataError, TrainingError
from seqtool.models import build_model
from seqtool.rundir import RunDir, load_for_inference, load_model_weights
from seqtool.tokenizer import SpecialIds
from seqtool.train import trainer as trainer_module
from seqtool.train.trainer import Trainer
from tests.unit.test_trainer import tiny_config

pytest_plugins = ["tests.unit.test_trainer"]  # the spm_model fixture


@pytest.fixture(scope="module")
def trained(tiny_corpus: dict[str, Path], spm_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    Trainer(tiny_config(tiny_corpus, spm_model, max_steps=4, eval_every=2), run).fit()
    return run


# -- checkpoints ---------------------------------------------------------------------------------------------------


def test_missing_truncated_and_corrupted_checkpoints(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    data = (trained / "checkpoints" / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "noise.pt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(tmp_path / "noise.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a seqtool checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


class _RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "payload": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_checkpoint_of_another_architecture_or_vocab(
    trained: Path, tiny_corpus: dict[str, Path], spm_model: Path
) -> None:
    state = load_checkpoint(trained / "checkpoints" / "last.pt")["model"]
    rnn = build_model(RNNConfig(embed_dim=8, hidden_size=8), 300, 300, SpecialIds(3, 1, 2, 0))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_model_weights(rnn, state, Path("x.pt"))
    bigger = build_model(tiny_config(tiny_corpus).model, 500, 500, SpecialIds(3, 1, 2, 0))
    with pytest.raises(CheckpointError, match="another architecture or vocabulary size"):
        load_model_weights(bigger, state, Path("x.pt"))


def test_translate_refuses_a_run_whose_config_no_longer_fits(trained: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    text = (copy / "config.yaml").read_text().replace("d_model: 32", "d_model: 48")
    (copy / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_for_inference(copy)


# -- training faults -----------------------------------------------------------------------------------------------


def _nan_after(calls: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every training batch's loss (trainer.batch_loss) after the first `calls` is NaN."""
    real = trainer_module.batch_loss
    count = {"n": 0}

    def patched(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        count["n"] += 1
        loss, nll = real(*args, **kwargs)
        if count["n"] > calls:
            return loss * float("nan"), nll * float("nan")
        return loss, nll

    monkeypatch.setattr(trainer_module, "batch_loss", patched)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = Trainer(tiny_config(tiny_corpus, spm_model, max_steps=20, eval_every=3, log_every=2), tmp_path / "run")
    _nan_after(4, monkeypatch)
    with pytest.raises(TrainingError) as err:
        trainer.fit()
    assert "last good checkpoint" in (err.value.hint or "") and "last.pt" in (err.value.hint or "")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert all(torch.isfinite(v).all() for v in best["model"].values() if v.is_floating_point())


def test_skip_nonfinite_skips_bad_updates(
    tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=3, eval_every=3, skip_nonfinite=True)
    trainer = Trainer(cfg, tmp_path / "run")
    monkeypatch.setattr(trainer_module, "batch_loss", _every_other_nan(trainer_module.batch_loss))
    result = trainer.fit()
    assert result.steps == 3 and trainer.skipped_updates == 2  # calls 2 and 4 were NaN
    assert "skipped an update with a non-finite loss" in (tmp_path / "run" / "train.log").read_text()


def test_skip_nonfinite_gives_up_when_every_update_fails(
    tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=3, eval_every=3, skip_nonfinite=True)
    trainer = Trainer(cfg, tmp_path / "run")
    _nan_after(0, monkeypatch)
    with pytest.raises(TrainingError, match="in a row"):
        trainer.fit()


def _every_other_nan(
    real: Callable[..., tuple[torch.Tensor, torch.Tensor]],
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    count = {"n": 0}

    def patched(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        loss, nll = real(*args, **kwargs)
        count["n"] += 1
        if count["n"] % 2 == 0:
            return loss * float("nan"), nll
        return loss, nll

    return patched


def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"model": {"w": torch.ones(3)}, "step": 1})
    before = target.read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic_module.os, "fsync", no_space)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(target, {"model": {"w": torch.zeros(3)}, "step": 2})
    assert "No space left on device" in err.value.message and "intact" in (err.value.hint or "")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


# -- corpora -------------------------------------------------------------------------------------------------------


def test_corpus_empty_after_filtering(tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path) -> None:
    for name in ("e.en", "e.de"):
        (tmp_path / name).write_text("\n   \n\t\n")
    cfg = tiny_config(tiny_corpus, spm_model)
    cfg.data.train_src, cfg.data.train_tgt = str(tmp_path / "e.en"), str(tmp_path / "e.de")
    with pytest.raises(DataError, match="no training pairs left"):
        Trainer(cfg, tmp_path / "run")
    assert not RunDir(tmp_path / "run").config.exists()


def test_invalid_utf8_in_the_corpus(tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.en"
    bad.write_bytes(tiny_corpus["train.en"].read_bytes().replace(b"\n", b"\xff\n", 1))
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=1, eval_every=1)
    cfg.data.train_src = str(bad)
    with pytest.raises(DataError, match=r"bad\.en:1: invalid UTF-8") as err:
        Trainer(cfg, tmp_path / "run")
    assert "--encoding-errors replace" in (err.value.hint or "")
    cfg.data.encoding_errors = "replace"
    assert Trainer(cfg, tmp_path / "run").fit().steps == 1


def test_missing_corpus_file_names_the_config_key(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_config(tiny_corpus)
    cfg.data.dev_tgt = str(tmp_path / "missing.de")
    with pytest.raises(DataError, match=r"data\.dev_tgt: file not found"):
        Trainer(cfg, tmp_path / "run")


def test_unk_rate_warning_for_a_foreign_script(tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path) -> None:
    greek = tmp_path / "dev.el"
    greek.write_text("Καλημέρα κόσμε, αυτό είναι ένα δοκιμαστικό κείμενο\n" * 40, encoding="utf-8")
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=1, eval_every=1)
    cfg.data.dev_tgt = str(greek)
    Trainer(cfg, tmp_path / "run")
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "of the dev target pieces are <unk>" in log
    assert "of the dev source pieces are <unk>" not in log


def test_crlf_bom_nul_and_tabs_in_the_corpus_train_fine(
    tiny_corpus: dict[str, Path], spm_model: Path, tmp_path: Path
) -> None:
    src = tiny_corpus["train.en"].read_text(encoding="utf-8").splitlines()
    tgt = tiny_corpus["train.de"].read_text(encoding="utf-8").splitlines()
    src[0], src[1], tgt[2] = "tab\tinside", "nul\x00byte", "bell\x07 and\ttab"
    (tmp_path / "s.en").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(src).encode() + b"\r\n")
    (tmp_path / "t.de").write_bytes("\r\n".join(tgt).encode() + b"\r\n")
    cfg = tiny_config(tiny_corpus, spm_model, max_steps=2, eval_every=2)
    cfg.data.train_src, cfg.data.train_tgt = str(tmp_path / "s.en"), str(tmp_path / "t.de")
    trainer = Trainer(cfg, tmp_path / "run")
    assert len(trainer.corpora[0].corpus) == len(src)  # nothing dropped, no line split by the CR or NUL
    assert trainer.fit().steps == 2


def test_a_file_that_is_not_a_sentencepiece_model(tmp_path: Path) -> None:
    from seqtool.tokenizer import SentencePieceModel

    (tmp_path / "fake.model").write_text("this is not a model\n")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        SentencePieceModel(tmp_path / "fake.model")
