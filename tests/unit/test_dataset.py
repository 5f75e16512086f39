"""The on-disk encoded corpus cache: equal to encoding in memory, reused when nothing changed, rebuilt otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqtool.data import dataset
from seqtool.data.batching import make_batch
from seqtool.data.corpus import filter_pairs, read_parallel
from seqtool.data.dataset import EncodedCorpus, id_dtype, open_or_build
from seqtool.errors import DataError
from seqtool.tokenizer import SentencePieceModel, Tokenizer, TokenizerSpec, train_sentencepiece

FILES = ("src.ids", "src.offsets", "tgt.ids", "tgt.offsets")
MAX_LEN, MAX_RATIO = 60, 2.5


@pytest.fixture(scope="module")
def spm_models(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small joint tokenizers that segment differently (vocabulary 200 and 300)."""
    root = tmp_path_factory.mktemp("spm")
    inputs = [tiny_corpus["train.en"], tiny_corpus["train.de"]]
    return (
        train_sentencepiece(inputs, root / "a", TokenizerSpec(vocab_size=200)),
        train_sentencepiece(inputs, root / "b", TokenizerSpec(vocab_size=300)),
    )


@pytest.fixture
def pair(tiny_corpus: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny corpus with an empty pair, a long one, a lopsided one, a BOM and CRLF line endings."""
    src = tiny_corpus["train.en"].read_text(encoding="utf-8").splitlines()[:300]
    tgt = tiny_corpus["train.de"].read_text(encoding="utf-8").splitlines()[:300]
    src[5], tgt[5] = "", "Leer"
    src[7], tgt[7] = "very " * 40, "sehr " * 40
    src[9], tgt[9] = "Open", "Öffnen Sie die Datei jetzt bitte"
    src_path, tgt_path = tmp_path / "train.en", tmp_path / "train.de"
    src_path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(src) + "\n").encode())
    tgt_path.write_bytes(("\r\n".join(tgt)).encode())  # CRLF, no final newline
    return src_path, tgt_path


def build(cache: Path, pair: tuple[Path, Path], model: Path, **kw: object) -> tuple[EncodedCorpus, object, bool]:
    args = {"max_len": MAX_LEN, "max_ratio": MAX_RATIO, "workers": 1} | kw
    return open_or_build(cache, pair[0], pair[1], model, None, **args)  # type: ignore[arg-type]


def cache_dirs(cache: Path) -> list[Path]:
    return sorted(cache.glob("corpus-*"))


def test_cache_equals_encoding_in_memory_then_filtering(
    pair: tuple[Path, Path], spm_models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset, "CHUNK_PAIRS", 64)  # several chunks, a partial last one
    corpus, report, built = build(tmp_path / "cache", pair, spm_models[0])
    tok = SentencePieceModel(spm_models[0])
    src_text, tgt_text = read_parallel(*pair)
    src_ids, tgt_ids = tok.encode(src_text), tok.encode(tgt_text)
    keep, expected = filter_pairs(src_ids, tgt_ids, MAX_LEN, MAX_RATIO)
    assert built
    assert report == expected == corpus.report
    assert all(report.dropped.values())  # every filter reason occurs in this data
    assert len(corpus) == len(keep)
    for row, i in enumerate(keep):
        assert corpus.src(row).tolist() == src_ids[i]
        assert corpus.tgt(row).tolist() == tgt_ids[i]
    assert corpus.src_lengths.tolist() == [len(src_ids[i]) for i in keep]
    assert corpus.tgt_lengths.tolist() == [len(tgt_ids[i]) for i in keep]
    assert corpus.src(-1).tolist() == src_ids[keep[-1]]
    with pytest.raises(IndexError):
        corpus.src(len(corpus))
    assert [a.tolist() for a in corpus.tgt_seqs[2:5]] == [tgt_ids[i] for i in keep[2:5]]
    # make_batch takes the memory-mapped arrays as it takes lists
    specials = Tokenizer.load(spm_models[0]).specials
    rows = [0, 3, 17]
    from_cache = make_batch([corpus.src(r) for r in rows], [corpus.tgt(r) for r in rows], specials)
    from_lists = make_batch([src_ids[keep[r]] for r in rows], [tgt_ids[keep[r]] for r in rows], specials)
    for name in ("src", "tgt_in", "tgt_out"):
        assert getattr(from_cache, name).equal(getattr(from_lists, name))
    assert from_cache.tgt_tokens == from_lists.tgt_tokens


def test_small_vocabulary_is_stored_as_uint16(
    pair: tuple[Path, Path], spm_models: tuple[Path, Path], tmp_path: Path
) -> None:
    corpus, _, _ = build(tmp_path / "cache", pair, spm_models[0])
    assert corpus.dtype == np.uint16 and corpus.manifest["dtype"] == "uint16"
    assert (corpus.directory / "src.ids").stat().st_size == 2 * int(corpus.src_lengths.sum())
    assert (corpus.directory / "src.offsets").stat().st_size == 8 * (len(corpus) + 1)
    assert id_dtype(65_536) == np.uint16 and id_dtype(65_537) == np.uint32


def test_reused_when_nothing_changed(pair: tuple[Path, Path], spm_models: tuple[Path, Path], tmp_path: Path) -> None:
    first, report, built = build(tmp_path / "cache", pair, spm_models[0])
    calls: list[int] = []
    again, report_again, built_again = build(tmp_path / "cache", pair, spm_models[0], progress=calls.append)
    assert built and not built_again and not calls
    assert again.directory == first.directory and report_again == report
    # the same tokenizer bytes at another path (a run directory's copy) are the same tokenizer
    copy = tmp_path / "copy.model"
    shutil.copyfile(spm_models[0], copy)
    assert not build(tmp_path / "cache", pair, copy)[2]


@pytest.mark.parametrize("change", ["content", "touch"])
def test_rebuilt_when_a_corpus_file_changes(
    pair: tuple[Path, Path], spm_models: tuple[Path, Path], tmp_path: Path, change: str
) -> None:
    cache = tmp_path / "cache"
    old, _, _ = build(cache, pair, spm_models[0])
    old_len = len(old)
    if change == "content":
        for path, line in zip(pair, ("One more line", "Noch eine Zeile"), strict=True):
            text = path.read_bytes()
            path.write_bytes(text + (b"" if text.endswith(b"\n") else b"\r\n") + line.encode() + b"\n")
    else:
        st = pair[1].stat()
        os.utime(pair[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    new, _, built = build(cache, pair, spm_models[0])
    assert built and new.directory != old.directory
    assert len(new) == old_len + (change == "content")
    assert cache_dirs(cache) == [new.directory]  # the cache of the old file versions is gone


def test_rebuilt_when_the_tokenizer_or_the_filter_changes(
    pair: tuple[Path, Path], spm_models: tuple[Path, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    base, _, _ = build(cache, pair, spm_models[0])
    other_tok, _, built_tok = build(cache, pair, spm_models[1])
    assert built_tok and other_tok.directory != base.directory
    assert [other_tok.src(i).tolist() for i in range(10)] != [base.src(i).tolist() for i in range(10)]
    shorter, report, built_len = build(cache, pair, spm_models[0], max_len=10)
    assert built_len and report.kept < base.report.kept
    assert all(n <= 10 for n in shorter.src_lengths)
    ratio, _, built_ratio = build(cache, pair, spm_models[0], max_ratio=0.0)
    assert built_ratio and ratio.report.dropped["length ratio"] == 0
    assert len(cache_dirs(cache)) == 4  # settings differ, the files did not: each cache stays valid
    assert not build(cache, pair, spm_models[0])[2]


def test_two_workers_write_the_same_bytes_as_one(
    pair: tuple[Path, Path], spm_models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset, "CHUNK_PAIRS", 32)
    calls: list[int] = []
    one, _, _ = build(tmp_path / "one", pair, spm_models[0], workers=1)
    two, _, _ = build(tmp_path / "two", pair, spm_models[0], workers=2, progress=calls.append)
    for name in (*FILES, "manifest.json"):
        assert (one.directory / name).read_bytes() == (two.directory / name).read_bytes(), name
    assert calls == sorted(calls) and calls[-1] == 300 and calls[0] == 32


@pytest.mark.parametrize("workers", [1, 2])
def test_a_crash_mid_build_leaves_no_cache(
    pair: tuple[Path, Path],
    spm_models: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
) -> None:
    monkeypatch.setattr(dataset, "CHUNK_PAIRS", 50)
    cache = tmp_path / "cache"

    def crash(done: int) -> None:
        if done >= 100:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(cache, pair, spm_models[0], workers=workers, progress=crash)
    assert list(cache.iterdir()) == []
    corpus, _, built = build(cache, pair, spm_models[0], workers=workers)
    assert built and corpus.report.total == 300


def test_a_damaged_or_killed_build_is_never_taken_as_valid(
    pair: tuple[Path, Path], spm_models: tuple[Path, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    corpus, _, _ = build(cache, pair, spm_models[0])
    ids = corpus.directory / "tgt.ids"
    del corpus
    ids.write_bytes(ids.read_bytes()[:-2])  # truncated
    assert build(cache, pair, spm_models[0])[2]
    (cache_dirs(cache)[0] / "manifest.json").unlink()
    assert build(cache, pair, spm_models[0])[2]
    # the temporary directory of a build whose process was killed is cleared by the next build
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = cache / f".build-{int(dead.stdout)}-x"
    leftover.mkdir()
    (leftover / "src.ids").write_bytes(b"\0\0")
    assert build(cache, pair, spm_models[0], max_len=12)[2]
    assert not leftover.exists()


def test_everything_filtered_out_opens_empty(
    pair: tuple[Path, Path], spm_models: tuple[Path, Path], tmp_path: Path
) -> None:
    corpus, report, _ = build(tmp_path / "cache", pair, spm_models[0], max_len=0)
    assert len(corpus) == 0 and report.kept == 0 and report.total == 300
    assert corpus.src_lengths.tolist() == []


def test_differing_line_counts_name_both_files(
    spm_models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, tgt = tmp_path / "a.en", tmp_path / "a.de"
    src.write_text("one\ntwo\nthree\n", encoding="utf-8")
    tgt.write_text("eins\nzwei\n", encoding="utf-8")
    with pytest.raises(DataError) as expected:
        read_parallel(src, tgt)
    with pytest.raises(DataError) as got:
        build(tmp_path / "cache", (src, tgt), spm_models[0])
    assert got.value.message == expected.value.message
    assert f"{src} has 3 lines, {tgt} has 2" in got.value.message
    assert not cache_dirs(tmp_path / "cache")
    # the same error when a file changes after the up-front count, found while streaming
    monkeypatch.setattr(dataset, "check_line_counts", lambda *paths: None)
    monkeypatch.setattr(dataset, "CHUNK_PAIRS", 1)
    with pytest.raises(DataError) as streamed:
        build(tmp_path / "cache", (src, tgt), spm_models[0])
    assert streamed.value.message == expected.value.message
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize(("bad_side", "workers"), [(0, 1), (1, 1), (1, 2)])
def test_invalid_utf8_names_the_file_and_line(
    spm_models: tuple[Path, Path], tmp_path: Path, bad_side: int, workers: int
) -> None:
    paths = (tmp_path / "a.en", tmp_path / "a.de")
    for side, path in enumerate(paths):
        path.write_bytes(b"one\ntwo\nthr\xffee\nfour\n" if side == bad_side else b"eins\nzwei\ndrei\nvier\n")
    with pytest.raises(DataError) as expected:
        read_parallel(*paths)
    with pytest.raises(DataError) as got:
        build(tmp_path / "cache", paths, spm_models[0], workers=workers)
    assert got.value.message == expected.value.message == f"{paths[bad_side]}:3: invalid UTF-8 (byte 0xff)"
    assert got.value.hint == expected.value.hint
    # with encoding_errors="replace" the pairs are those read_parallel gives
    corpus, _, _ = build(tmp_path / "cache", paths, spm_models[0], max_len=100, encoding_errors="replace")
    tok = SentencePieceModel(spm_models[0])
    src_text, _ = read_parallel(*paths, encoding_errors="replace")
    assert [corpus.src(i).tolist() for i in range(len(corpus))] == tok.encode(src_text)


def test_missing_file_is_a_data_error(spm_models: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "a.en").write_text("x\n", encoding="utf-8")
    with pytest.raises(DataError, match="file not found"):
        build(tmp_path / "cache", (tmp_path / "a.en", tmp_path / "missing.de"), spm_models[0])


def _mapped_rss_kb(path: Path) -> int:
    """Resident kB of this process's mappings of `path` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = len(fields) >= 6 and fields[-1] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def _write_cache(directory: Path, pairs: int, length: int) -> None:
    """A cache directory by hand: every pair `length` ids long, ids counting up modulo 5000."""
    directory.mkdir()
    offsets = np.arange(pairs + 1, dtype=np.int64) * length
    ids = (np.arange(pairs * length) % 5000).astype(np.uint16)
    for side in ("src", "tgt"):
        ids.tofile(directory / f"{side}.ids")
        offsets.tofile(directory / f"{side}.offsets")
    manifest = {"dtype": "uint16", "pairs": pairs, "src_tokens": pairs * length, "tgt_tokens": pairs * length}
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_pairs_read_all_over_the_cache_leave_nothing_resident(tmp_path: Path) -> None:
    """Reading pairs all over a large cache must not map its pages into the process (peak RSS would grow with it)."""
    pairs, length = 40_000, 50  # 4 MB of uint16 ids per side
    directory = tmp_path / "corpus-test"
    _write_cache(directory, pairs, length)
    corpus = EncodedCorpus(directory)
    assert corpus.src_lengths.tolist() == [length] * pairs  # reads every offset
    step = 41  # a new page at every read, all over the file, as shuffled batches read them
    seen = [int(corpus.src(i)[0]) for i in range(0, pairs, step)]
    assert seen == [(i * length) % 5000 for i in range(0, pairs, step)]
    assert corpus.tgt(pairs - 1).tolist() == [((pairs - 1) * length + k) % 5000 for k in range(length)]
    for name in ("src.ids", "src.offsets", "tgt.ids", "tgt.offsets"):
        assert _mapped_rss_kb((directory / name).resolve()) == 0, name


def test_a_cache_file_cut_short_is_a_data_error(tmp_path: Path) -> None:
    directory = tmp_path / "corpus-test"
    _write_cache(directory, 100, 4)
    corpus = EncodedCorpus(directory)
    assert corpus.src(99).tolist() == [396, 397, 398, 399]
    with open(directory / "src.ids", "r+b") as handle:
        handle.truncate(2 * 398)
    assert corpus.src(98).tolist() == [392, 393, 394, 395]
    with pytest.raises(DataError, match="shorter than its cache manifest"):
        corpus.src(99)
    with pytest.raises(IndexError):
        corpus.src(100)
