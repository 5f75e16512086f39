"""Inspection and comparison commands: info, plot, attention, eval with several systems; the config reference."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from seqtool.cli import app
from seqtool.errors import SeqtoolError
from tests.cli.helpers import write_config
from tests.cli.test_cli import assert_user_error, seqtool

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, from its IHDR chunk; fails when the file is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def png_pixels(path: Path) -> Any:
    """The RGB pixels of a PNG file as integers 0-255, (height, width, 3), decoded by matplotlib."""
    from matplotlib.image import imread

    width, height = png_size(path)
    pixels = (imread(path)[..., :3] * 255).round().astype(int)
    assert pixels.shape == (height, width, 3)
    return pixels


def colour_shares(pixels: Any, palette: Any) -> tuple[Any, Any, Any]:
    """The distinct colours of the pixels, the share of the pixels each covers, and whether each is within 2 levels
    (per channel) of a colour of `palette` (n, 3)."""
    import numpy as np

    keys, counts = np.unique(pixels.reshape(-1, 3) @ np.array([65536, 256, 1]), return_counts=True)
    colours = np.stack([keys // 65536, keys // 256 % 256, keys % 256], axis=1)
    near = np.abs(colours[:, None, :] - np.asarray(palette)[None, :, :]).max(-1).min(-1) <= 2
    return colours, counts / counts.sum(), near


def share(pixels: Any, palette: Any) -> float:
    """The share of the pixels within 2 levels (per channel) of a colour of `palette` (n, 3)."""
    _, shares, near = colour_shares(pixels, palette)
    return float(shares[near].sum())


@pytest.fixture(scope="module")
def runs(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Transformer and a tiny GRU with Luong attention, 30 steps each, validated twice."""
    root = tmp_path_factory.mktemp("inspect")
    out = {}
    for name, model in (("transformer", "transformer"), ("gru", "gru")):
        config = write_config(root / f"{name}.yaml", tiny_corpus, model)
        result = seqtool("train", str(config), "--run-dir", str(root / name), "--set", "train.save_every=10")
        assert result.returncode == 0, result.stderr
        out[name] = root / name
    return out


def test_info_text_and_json(runs: dict[str, Path]) -> None:
    result = seqtool("info", str(runs["transformer"]))
    assert result.returncode == 0, result.stderr
    assert "Transformer 1+1 layers, d_model 32, 2 heads" in result.stdout
    assert "best dev BLEU" in result.stdout and "steps" in result.stdout
    assert "model.d_model: 256 -> 32" in result.stdout  # differences from the defaults
    data = json.loads(seqtool("info", str(runs["transformer"]), "--json").stdout)
    assert data["steps"] == 30 and data["best_dev_bleu_step"] in (15, 30)
    assert data["src_vocab"] == data["tgt_vocab"] == 400 and data["joint_vocab"] is True
    assert {"best", "last", "step_10", "step_20", "step_30"} <= set(data["checkpoints"])
    from seqtool.rundir import load_for_inference

    model, *_ = load_for_inference(runs["transformer"], "last")
    assert data["parameters"] == model.num_parameters()
    gru = json.loads(seqtool("info", str(runs["gru"]), "--json").stdout)
    assert gru["architecture"].startswith("GRU encoder–decoder")


def test_info_on_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    assert_user_error(seqtool("info", str(tmp_path)), "not a seqtool run directory")


@pytest.mark.slow  # a figure: about 3 s (make test-slow)
def test_plot_curves_of_two_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    result = seqtool("plot", str(runs["transformer"]), str(runs["gru"]), "-o", str(out))
    assert result.returncode == 0, result.stderr
    pixels = png_pixels(out)
    assert pixels.shape == (770, 1210, 3)  # 11×7 in at 110 dpi
    assert share(pixels, [(255, 255, 255)]) > 0.5  # on white: panels, axes, labels
    for colour in [(31, 119, 180), (255, 127, 14)]:  # the curves of both runs, in matplotlib's first two colours
        assert share(pixels, [colour]) > 0.0005, colour  # measured: 0.0014 and 0.0016 for two 400-step runs
    assert_user_error(seqtool("plot", str(runs["gru"]), "-o", str(out)), "exists", "--overwrite")
    assert_user_error(seqtool("plot", str(tmp_path / "nope"), "-o", str(tmp_path / "x.png")), "not found")


def test_plot_without_matplotlib_names_the_extra(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = CliRunner().invoke(app, ["plot", str(runs["gru"]), "-o", str(tmp_path / "c.png")])
    assert isinstance(result.exception, SeqtoolError)
    assert "matplotlib" in result.exception.message and "seqtool[plot]" in (result.exception.hint or "")
    assert not (tmp_path / "c.png").exists()


@pytest.mark.slow  # a figure: about 3 s each (make test-slow)
@pytest.mark.parametrize("name", ["transformer", "gru"])
def test_attention_heatmap(runs: dict[str, Path], tmp_path: Path, name: str) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / f"{name}.png"
    result = seqtool("attention", str(runs[name]), "Open the file", "-o", str(out), "--beam", "1")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1  # the translation (maybe empty after 30 steps), then the picture
    import matplotlib
    import numpy as np

    pixels = png_pixels(out)
    height, width, _ = pixels.shape
    assert 300 <= width <= 3000 and 200 <= height <= 3000
    viridis = (matplotlib.colormaps["viridis"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round()
    colours, shares, near = colour_shares(pixels, viridis)
    assert shares[near].sum() > 0.2  # the heatmap's cells (and the colour bar) cover much of the picture
    cells = colours[near & (shares > 0.01)]  # colours of large areas: cells (a colour bar's row is thin)
    assert len(cells) >= 2, cells  # cells of different weights, not one flat colour


def test_attention_weights_rows_are_distributions(runs: dict[str, Path]) -> None:
    import torch

    from seqtool.decode.attention_map import attention_map
    from seqtool.decode.search import SearchConfig
    from seqtool.rundir import load_for_inference

    model, tokenizer, _, _ = load_for_inference(runs["transformer"], "last", torch.device("cpu"))
    cfg = SearchConfig(beam=1, nbest=1, length_penalty=0.0, max_len_a=1.0, max_len_b=5)
    for head in (None, 0, 1):
        amap = attention_map(model, tokenizer, "Open the file", cfg, layer=-1, head=head)
        weights = torch.tensor(amap.weights)
        assert weights.shape == (len(amap.tgt_pieces), len(amap.src_pieces))
        torch.testing.assert_close(weights.sum(-1), torch.ones(len(amap.tgt_pieces)))
        assert amap.src_pieces[-1] == "</s>" and amap.tgt_pieces[-1] == "</s>"
    with pytest.raises(SeqtoolError, match=r"head must be in 0\.\.1"):
        attention_map(model, tokenizer, "Open the file", cfg, head=2)


def test_eval_compares_systems_with_paired_bootstrap(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    refs = tiny_corpus["test.de"].read_text(encoding="utf-8").splitlines()
    perfect = tmp_path / "perfect.de"
    perfect.write_text("\n".join(refs) + "\n", encoding="utf-8")
    poor = tmp_path / "poor.de"
    poor.write_text("\n".join(" ".join(r.split()[:2]) for r in refs) + "\n", encoding="utf-8")
    same = tmp_path / "same.de"
    same.write_text(poor.read_text(encoding="utf-8"), encoding="utf-8")
    close = tmp_path / "close.de"  # the poor system with one line changed: no significant difference
    close.write_text("\n".join([" ".join(refs[0].split()[:3]), *poor.read_text().splitlines()[1:]]) + "\n")
    ref = str(tiny_corpus["test.de"])
    result = seqtool("eval", "--hyp", str(poor), "--hyp", str(perfect), "--hyp", str(same), "--hyp", str(close),
                     "--ref", ref, "--bootstrap", "200", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    poor_row, perfect_row, same_row, close_row = data["systems"]
    assert perfect_row["bleu"]["score"] == pytest.approx(100.0)
    assert poor_row["bleu"]["p_value"] is None  # the baseline
    assert perfect_row["bleu"]["p_value"] < 0.05 and perfect_row["chrf"]["p_value"] < 0.05
    assert same_row["bleu"]["p_value"] == 1.0 and same_row["bleu"]["score"] == poor_row["bleu"]["score"]
    assert close_row["bleu"]["p_value"] > 0.05 and close_row["chrf"]["p_value"] > 0.05
    assert perfect_row["bleu"]["ci"] is not None and perfect_row["bleu"]["mean"] is not None
    assert data["signatures"]["bleu"].startswith("nrefs:1") and data["bootstrap_samples"] == 200
    text = seqtool("eval", "--hyp", str(poor), "--hyp", str(perfect), "--ref", ref, "--bootstrap", "100")
    assert text.returncode == 0, text.stderr
    assert "paired bootstrap" in text.stdout and "*" in text.stdout.splitlines()[3]
    short = tmp_path / "short.de"
    short.write_text("x\n", encoding="utf-8")
    assert_user_error(seqtool("eval", "--hyp", str(poor), "--hyp", str(short), "--ref", ref), "1 lines")


def test_readme_config_reference_is_generated_from_the_schema() -> None:
    from seqtool.config import iter_fields
    from seqtool.config_reference import END, START, reference_markdown

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == reference_markdown().strip(), "README's config reference is stale: run `make docs`"
    for dotted, _, _ in iter_fields():
        key = dotted.replace("[TransformerConfig]", "").replace("[RNNConfig]", "")
        assert f"`{key}`" in block
