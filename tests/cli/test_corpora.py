"""Several corpora and language tags through the real commands: errors naming the config key, the tag as one piece,
`prepare`/`info`/`plot` per corpus and dev set, `translate`/`score` --tgt-lang (the learning test: tests/system)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from seqtool.tokenizer import SentencePieceModel
from tests.cli.helpers import TINY_MODEL
from tests.cli.test_cli import assert_user_error, seqtool

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def corpus_files(tiny: dict[str, Path], root: Path) -> dict[str, dict[str, str]]:
    """The tiny corpus's training pairs split in two corpora of 400 and 200 pairs."""
    files: dict[str, dict[str, str]] = {}
    for name, part in (("big", slice(0, 400)), ("small", slice(400, None))):
        files[name] = {}
        for side, lang in (("src", "en"), ("tgt", "de")):
            path = root / f"{name}.{lang}"
            path.write_text("".join(tiny[f"train.{lang}"].read_text(encoding="utf-8").splitlines(True)[part]))
            files[name][side] = str(path)
    return files


def write(path: Path, train: list[dict[str, Any]], dev: list[dict[str, Any]] | None = None, **data: Any) -> Path:
    config = {
        "data": {"train": train, **({"dev": dev} if dev else {}), "workers": 1, **data},
        "tokenizer": {"vocab_size": 400},
        "model": TINY_MODEL["transformer"],
        "train": {"max_steps": 6, "eval_every": 6, "log_every": 2, "batch_tokens": 800, "threads": 1},
        "decode": {"max_len_a": 1.0, "max_len_b": 5},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tagged(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 6-step model with two tagged corpora (de and xx: the same German, another tag) and a dev set per tag."""
    root = tmp_path_factory.mktemp("tagged")
    files = corpus_files(tiny_corpus, root)
    dev = {"src": str(tiny_corpus["dev.en"]), "tgt": str(tiny_corpus["dev.de"])}
    cfg = write(
        root / "tagged.yaml",
        [{"name": "big", **files["big"], "weight": 2, "tgt_lang": "de"}, {"name": "small", **files["small"],
          "tgt_lang": "xx"}],
        [{"name": "dev-de", **dev, "tgt_lang": "de"}, {"name": "dev-xx", **dev, "tgt_lang": "xx"}],
    )  # fmt: skip
    result = seqtool("train", str(cfg), "--run-dir", str(root / "run"))
    assert result.returncode == 0, result.stderr
    return cfg, root / "run"


def test_training_logs_and_info_report_each_corpus_and_dev_set(tagged: tuple[Path, Path]) -> None:
    _, run = tagged
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "training data big: kept 400 of 400 pairs" in log and "training data small: kept 200 of 200" in log
    assert "share of the batches: big " in log and "(67%), small " in log and "(33%)" in log
    assert "[dev-de " in log and "dev-xx " in log and "; mean]" in log
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert train[-1]["run_share.big"] + train[-1]["run_share.small"] == pytest.approx(1.0)
    assert train[-1]["run_share.big"] > train[-1]["run_share.small"] > 0  # 4 batches of big, 2 of small
    evals = [r for r in records if r["type"] == "eval"]
    assert {"dev_bleu.dev-de", "dev_bleu.dev-xx", "dev_loss.dev-de", "dev_loss.dev-xx"} <= set(evals[-1])
    info = json.loads(seqtool("info", str(run), "--json").stdout)
    assert info["languages"] == ["de", "xx"]
    assert [(c["name"], c["kept"], round(c["batch_share"], 3)) for c in info["corpora"]] == [
        ("big", 400, 0.667), ("small", 200, 0.333)
    ]  # fmt: skip


def test_the_tag_is_one_piece_in_front_of_the_source(tagged: tuple[Path, Path]) -> None:
    _, run = tagged
    sp = SentencePieceModel(run / "spm.model")
    de, xx = sp.tag_id("de"), sp.tag_id("xx")
    assert sp.processor.id_to_piece(de) == "<2de>" and de != xx
    for line in ("Open the file", "<2de>", "x<2de>y"):  # never split, wherever it stands
        assert sp.encode([line.replace("<2de>", " <2de> ")])[0].count(de) == line.count("<2de>")
    with pytest.raises(Exception, match="has no piece <2fr>"):
        sp.tag_id("fr")


# make test-slow: keeps make test under 8 minutes (11 s of subprocess decoding)
@pytest.mark.slow
def test_translate_and_score_with_and_without_a_language(tagged: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = tagged
    assert_user_error(seqtool("translate", str(run), stdin="Open\n"), "several languages (de, xx)", "--tgt-lang de")
    assert_user_error(seqtool("translate", str(run), "--tgt-lang", "fr", stdin="Open\n"), "'fr'", "de, xx")
    assert_user_error(seqtool("score", str(run), stdin="Open\tÖffnen\n"), "several languages")
    out = seqtool("translate", str(run), "--tgt-lang", "xx", "--align", stdin="Open the file\n\nSave\n")
    assert out.returncode == 0, out.stderr
    rows = out.stdout.split("\n")[:3]
    assert rows[1] == "\t"  # one line per line; the empty line stays empty
    for row, words in zip(rows[::2], (3, 1), strict=True):  # links to source words only, never to the tag
        assert all(0 <= int(link.split("-")[0]) < words for link in row.split("\t")[1].split()), row
    scored = seqtool("score", str(run), "--tgt-lang", "de", stdin="Open the file\tDatei öffnen\n")
    assert scored.returncode == 0 and scored.stdout.count("\t") == 2, scored.stderr


@pytest.fixture(scope="module")
def target_tagged(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tagged` model with its tags as the first target token (data.tag_side: target)."""
    root = tmp_path_factory.mktemp("target-tagged")
    files = corpus_files(tiny_corpus, root)
    dev = {"src": str(tiny_corpus["dev.en"]), "tgt": str(tiny_corpus["dev.de"])}
    cfg = write(
        root / "target.yaml",
        [{"name": "big", **files["big"], "tgt_lang": "de"}, {"name": "small", **files["small"], "tgt_lang": "xx"}],
        [{"name": "dev-de", **dev, "tgt_lang": "de"}],
        tag_side="target",
    )
    result = seqtool("train", str(cfg), "--run-dir", str(root / "run"))
    assert result.returncode == 0, result.stderr
    return root / "run"


def test_a_target_side_tag_is_forced_scored_and_taken_off(target_tagged: Path) -> None:
    """Every search starts its outputs with the tag and shows them without it; the scores are the model's for tag
    and output (what `score` gives the pair); a server's continuous beam search gives what `translate` gives."""
    from seqtool.decode import DecodeOptions, load_translator
    from seqtool.decode.scoring import score_ids
    from seqtool.decode.search import SearchConfig
    from seqtool.decode.translate import clean_line, encode_sources, translate_ids

    translator = load_translator(target_tagged, DecodeOptions(quantize="none", threads=1))
    de = translator.tokenizer.tgt.tag_id("de")
    lines = ["Open the file", "", "Save all documents now", "Close"]
    src_ids, _ = encode_sources(translator.tokenizer, lines, None)  # no tag in front of the sources
    for cfg in (
        SearchConfig(beam=1, tgt_lang="de"),
        SearchConfig(beam=3, nbest=2, tgt_lang="de"),
        SearchConfig(beam=1, sample=True, nbest=2, top_k=5, tgt_lang="de"),
    ):
        found = translator.translate(lines, cfg)
        hyps = translate_ids(translator.model, src_ids, cfg, prefixes=[[de]] * len(lines))
        assert found[1] == [found[1][0]] and found[1][0].text == ""
        for i in (0, 2, 3):
            assert [h.tokens[0] for h in hyps[i]] == [de] * cfg.nbest  # forced
            texts = [clean_line(t) for t in translator.tokenizer.tgt.decode([h.tokens[1:] for h in hyps[i]])]
            assert [t.text for t in found[i]] == texts  # the leading tag taken off (a tiny model may say it again)
            forced = score_ids(translator.model, [src_ids[i]] * cfg.nbest, [h.tokens for h in hyps[i]],
                               range(cfg.nbest), 4000, translator.device)  # fmt: skip
            for j, translation in enumerate(found[i]):
                assert translation.log_prob == pytest.approx(forced[j], abs=1e-4) == hyps[i][j].log_prob
    beam = SearchConfig(beam=3, tgt_lang="de")
    offline = translator.translate(lines, beam)
    stream = translator.stream(beam)
    assert stream is not None
    done = dict(stream.admit(lines, range(4)))
    while stream.live:
        done.update(stream.step())
    assert [done[i][0].text for i in range(4)] == [nbest[0].text for nbest in offline]
    [pair] = translator.score(["Open the file"], [offline[0][0].text], "none", tgt_lang="de")
    target = translator.tokenizer.tgt.encode([offline[0][0].text])[0]
    [by_ids] = score_ids(translator.model, [src_ids[0]], [[de, *target]], [0], 4000, translator.device).values()
    assert pair.log_prob == pytest.approx(by_ids, abs=1e-4) and pair.tokens == len(target) + 2  # tag and </s>


def test_a_target_side_tag_gets_no_alignment_link(target_tagged: Path) -> None:
    """The alignment is read with the tag in front of the target, as the model was trained, then the tag's row is
    dropped: the links of the output's own pieces."""
    from seqtool.decode import DecodeOptions, load_translator
    from seqtool.decode.alignment import pharaoh, piece_links
    from seqtool.decode.search import SearchConfig
    from seqtool.decode.translate import encode_sources, translate_ids

    translator = load_translator(target_tagged, DecodeOptions(quantize="none", threads=1))
    de, tokenizer = translator.tokenizer.tgt.tag_id("de"), translator.tokenizer
    lines = ["Open the file", "Save all documents now"]
    cfg = SearchConfig(beam=2, tgt_lang="de")
    found = translator.translate(lines, cfg, align=True)
    src_ids, _ = encode_sources(tokenizer, lines, None)
    hyps = [nbest[0].tokens for nbest in translate_ids(translator.model, src_ids, cfg, prefixes=[[de], [de]])]
    links = piece_links(translator.model, src_ids, hyps, translator.device)
    for i, tokens in enumerate(hyps):
        assert tokens[0] == de and len(links[i]) == len(tokens)
        src_pieces = [tokenizer.src.processor.id_to_piece(t) for t in src_ids[i]]
        tgt_pieces = [tokenizer.tgt.processor.id_to_piece(t) for t in tokens[1:]]
        assert found[i][0].alignment == pharaoh(src_pieces, tgt_pieces, links[i][1:])
    out = seqtool("translate", str(target_tagged), "--tgt-lang", "de", "--align", stdin="Open the file\n\nSave\n")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3 and "<2de>" not in out.stdout, out.stderr


@pytest.mark.slow  # an export and two engines
def test_ctranslate2_forces_a_target_side_tag_as_seqtool_does(target_tagged: Path) -> None:
    pytest.importorskip("ctranslate2")
    assert seqtool("export", str(target_tagged), "--format", "ctranslate2").returncode == 0
    lines = "Open the file\n\nSave all documents now\nClose\n"
    args = ("--tgt-lang", "xx", "--beam", "1", "--scores")
    ours = seqtool("translate", str(target_tagged), *args, "--quantize", "none", stdin=lines)
    theirs = seqtool("translate", str(target_tagged), *args, "--engine", "ctranslate2", stdin=lines)
    assert ours.returncode == theirs.returncode == 0, theirs.stderr
    for a, b in zip(ours.stdout.splitlines(), theirs.stdout.splitlines(), strict=True):
        assert a.split("\t")[0] == b.split("\t")[0] and "<2xx>" not in a
        assert float(a.split("\t")[1]) == pytest.approx(float(b.split("\t")[1]), abs=1e-3)


@pytest.mark.slow  # one more training run (the message itself: tests/unit/test_decode_languages.py)
def test_untagged_corpora_and_a_language_asked_for(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    files = corpus_files(tiny_corpus, tmp_path)
    cfg = write(tmp_path / "u.yaml", [{"name": "big", **files["big"]}, {"name": "small", **files["small"]}])
    assert seqtool("train", str(cfg), "--run-dir", str(tmp_path / "run")).returncode == 0
    result = seqtool("translate", str(tmp_path / "run"), "--tgt-lang", "de", stdin="Open\n")
    assert_user_error(result, "trained without language tags", "without --tgt-lang")
    assert seqtool("translate", str(tmp_path / "run"), stdin="Open\n").returncode == 0


@pytest.mark.slow  # five processes (the config checks themselves: tests/unit/test_config.py)
def test_corpus_errors_name_the_key(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    files = corpus_files(tiny_corpus, tmp_path)
    missing = {**files["small"], "src": str(tmp_path / "nowhere.en")}
    cfg = write(tmp_path / "missing.yaml", [{"name": "big", **files["big"]}, {"name": "small", **missing}])
    assert_user_error(seqtool("train", str(cfg), "--run-dir", str(tmp_path / "r1")), "data.train[1].src", "nowhere")
    empty = {side: str(tmp_path / f"empty.{side}") for side in ("src", "tgt")}
    for path in empty.values():
        Path(path).write_text("\n\n", encoding="utf-8")
    cfg = write(tmp_path / "empty.yaml", [{"name": "big", **files["big"]}, {"name": "void", **empty}])
    assert_user_error(seqtool("train", str(cfg), "--run-dir", str(tmp_path / "r2")), "data.train[1] (void)")
    cfg = write(tmp_path / "zero.yaml", [{"name": "big", **files["big"], "weight": 0}])
    assert_user_error(seqtool("train", str(cfg), "--run-dir", str(tmp_path / "r3")), "data.train[0].weight")
    # a tokenizer given without the tags of the corpora's languages
    untagged = tmp_path / "spm"
    assert seqtool("tokenizer", "train", "-i", files["big"]["src"], "--vocab-size", "300", "-o", str(untagged))
    cfg = write(tmp_path / "tags.yaml", [{"name": "big", **files["big"], "tgt_lang": "de"}])
    raw = yaml.safe_load(cfg.read_text())
    raw["tokenizer"]["model"] = str(untagged) + ".model"
    cfg.write_text(yaml.safe_dump(raw))
    assert_user_error(seqtool("train", str(cfg), "--run-dir", str(tmp_path / "r4")), "no piece <2de>", "--tgt-langs")


def test_prepare_shows_each_corpus_and_its_share(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    files = corpus_files(tiny_corpus, tmp_path)
    cfg = write(
        tmp_path / "p.yaml",
        [{"name": "big", **files["big"], "weight": 3}, {"name": "small", **files["small"]}],
        cache_dir=str(tmp_path / "cache"),
    )
    spm = str(tmp_path / "joint.model")
    result = seqtool("prepare", str(cfg), "--set", f"tokenizer.model={spm}", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "ready: big: 400 training pairs (75% of the batches)" in result.stderr
    assert "ready: small: 200 training pairs (25% of the batches)" in result.stderr
    assert len(list((tmp_path / "cache").glob("corpus-*"))) == 2  # one cache per corpus


def test_server_asks_for_the_language_of_a_tagged_model(tagged: tuple[Path, Path]) -> None:
    """`POST /v1/translate` with "tgt_lang": the offline translations; without one, a 422 naming the languages."""
    import httpx

    from tests.serve.test_server import Server

    _, run = tagged
    srv = Server(str(run), "--quantize", "none", "--threads", "2", "--max-wait-ms", "20").wait_ready()
    try:
        [model] = httpx.get(srv.url + "/v1/models").json()["models"]
        assert model["languages"] == ["de", "xx"]
        lines = ["Open the file", "", "Save all documents"]
        missing = httpx.post(srv.url + "/v1/translate", json={"text": lines}, timeout=60)
        assert missing.status_code == 422 and "several languages (de, xx)" in missing.json()["error"]
        unknown = httpx.post(srv.url + "/v1/translate", json={"text": lines, "tgt_lang": "fr"}, timeout=60)
        assert unknown.status_code == 422 and "de, xx" in unknown.json()["hint"]
        answer = httpx.post(srv.url + "/v1/translate", json={"text": lines, "tgt_lang": "xx"}, timeout=60)
        assert answer.status_code == 200, answer.text
        offline = seqtool("translate", str(run), "--tgt-lang", "xx", stdin="\n".join(lines) + "\n")
        assert [t["text"] for t in answer.json()["translations"]] == offline.stdout.split("\n")[:3]
        if CHROMIUM is not None:  # the page shows a language picker for this model and sends its choice
            shown = translate_in_the_page(srv.url, "Open the file", "xx", SCREENSHOTS / "page-languages.png")
            assert shown == offline.stdout.split("\n")[:1]
    finally:
        code, err = srv.stop()
        assert code == 0, err


SCREENSHOTS = Path(os.environ.get("SEQTOOL_SCREENSHOTS", tempfile.gettempdir()))


def translate_in_the_page(url: str, sentence: str, language: str, screenshot: Path) -> list[str]:
    """Headless Chromium: pick `language` in the page's language picker, translate `sentence`, read the output."""
    from tests.serve.test_page_browser import CHROMIUM, FLAGS, sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            page.goto(url + "/")
            page.wait_for_function("document.querySelectorAll('#lang option').length > 0", timeout=30_000)
            assert page.locator("#langbox").is_visible()
            page.select_option("#lang", language)
            page.fill("#source", sentence)
            page.click("#go")
            page.wait_for_selector("#output .line .best", timeout=60_000)
            shown = page.locator("#output .line .best").all_inner_texts()
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    return shown


def test_plot_draws_a_line_per_dev_set() -> None:
    from seqtool.plot import _lines

    records = [{"type": "eval", "step": 5, "dev_bleu": 2.0, "dev_bleu.de": 1.0, "dev_bleu.fr": 3.0}]
    assert _lines(records, "dev_bleu", "run") == [("dev_bleu.de", "run de"), ("dev_bleu.fr", "run fr")]
    assert _lines([{"type": "eval", "step": 5, "dev_bleu": 2.0}], "dev_bleu", "run") == [("dev_bleu", "run")]
