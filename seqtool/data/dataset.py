"""The encoded training corpus cached on disk as flat id arrays + offsets, read pair by pair: bigger than RAM is fine.

A cache is one directory `CACHE_DIR/corpus-<key>/` holding

    src.ids, tgt.ids            all kept pairs' piece ids back to back (uint16, or uint32 for vocabularies > 65,536)
    src.offsets, tgt.offsets    int64, pairs + 1 entries: pair i is ids[offsets[i]:offsets[i + 1]]
    manifest.json               format version, dtype, counts, the key (and what it was made of), the filter report

The key covers the corpus files (path, size, mtime), the tokenizer model bytes, the filter settings and, for a sampled
encoding (subword regularisation), the sampling settings, seed and copy number, so any change builds a new cache. A
cache is built in a hidden temporary directory and renamed into place once complete: a directory named `corpus-*`
with a matching manifest is always whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, overload

import numpy as np
import sentencepiece as spm

from seqtool.atomic import fsync_path
from seqtool.data.corpus import FilterReport, check_readable, filter_pairs
from seqtool.data.subword import SubwordSampling, check_samplable, piece_scores, sample_segmentations
from seqtool.errors import DataError

FORMAT_VERSION = 1
CHUNK_PAIRS = 4096  # pairs per encoding task
MANIFEST = "manifest.json"
_PREFIX = "corpus-"
_BUILD_PREFIX = ".build-"
_DROP_REASONS = ("empty", "too long", "length ratio")


# ---------------------------------------------------------------------------------------------------------------------
# Reading


class ArrayFile:
    """A flat array file on disk, read a slice at a time with positioned reads: none of it is mapped into the process.

    Training reads pairs all over the corpus. Through a memory map every page it touches counts in the process's
    resident set, and on Linux 6.x with large page-cache folios one read maps up to 2 MB (measured: 64 random reads
    of a cached 200 MB file mapped 102 MB), so peak RSS grew with the corpus even when the mapped pages were dropped
    every 1,024 reads. A positioned read (os.pread, thread-safe, no shared file position) copies just the bytes
    asked for from the page cache, for about 2 µs: a few ms per batch, against a training step of 0.1-1 s.
    """

    def __init__(self, path: Path, dtype: np.dtype, count: int) -> None:
        self.path = path
        self.dtype = dtype
        self.count = count
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._close = weakref.finalize(self, os.close, self._fd)  # a raw descriptor: closed with the object
        self._lock = threading.Lock()  # for the seek + read fallback where os.pread is missing (Windows)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Elements [start, stop) as a read-only array (a copy of those bytes only)."""
        if not 0 <= start <= stop <= self.count:
            raise IndexError(f"elements [{start}, {stop}) out of range for {self.count} in {self.path}")
        size = self.dtype.itemsize
        length, position = (stop - start) * size, start * size
        if length == 0:
            return np.zeros(0, dtype=self.dtype)
        if hasattr(os, "pread"):
            raw = os.pread(self._fd, length, position)
        else:
            with self._lock:
                os.lseek(self._fd, position, os.SEEK_SET)
                raw = os.read(self._fd, length)
        if len(raw) != length:
            raise DataError(f"{self.path} is shorter than its cache manifest says", "delete the cache directory")
        return np.frombuffer(raw, dtype=self.dtype)

    def close(self) -> None:
        """Close the file now rather than when the object goes (reads after this fail)."""
        self._close()


class IdSequences(Sequence[np.ndarray]):
    """One side of the corpus as a read-only sequence of id arrays, each read from disk when asked for."""

    def __init__(self, ids: ArrayFile, offsets: ArrayFile) -> None:
        self.ids = ids
        self.offsets = offsets
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return max(self.offsets.count - 1, 0)

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, i: slice) -> list[np.ndarray]: ...
    def __getitem__(self, i: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"pair index {i} out of range for {n} pairs")
        start, stop = self.offsets.read(i, i + 2).tolist()
        return self.ids.read(start, stop)

    @property
    def lengths(self) -> np.ndarray:
        """Pieces per pair (int32), computed once from the offsets, block by block."""
        if self._lengths is None:
            n = len(self)
            lengths = np.empty(n, dtype=np.int32)  # 4 bytes per pair, not 8
            block = 1 << 20
            for start in range(0, n, block):
                stop = min(n, start + block)
                bounds = self.offsets.read(start, stop + 1)
                np.subtract(bounds[1:], bounds[:-1], out=lengths[start:stop], casting="unsafe")
            self._lengths = lengths
        return self._lengths


class EncodedCorpus:
    """A cache directory opened read-only: the kept training pairs as id arrays read from disk when asked for."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest: dict[str, Any] = json.loads((self.directory / MANIFEST).read_text(encoding="utf-8"))
        self.dtype = np.dtype(self.manifest["dtype"])
        self.src_seqs = self._side("src")
        self.tgt_seqs = self._side("tgt")

    def _side(self, side: str) -> IdSequences:
        offsets = ArrayFile(self.directory / f"{side}.offsets", np.dtype(np.int64), self.manifest["pairs"] + 1)
        ids = ArrayFile(self.directory / f"{side}.ids", self.dtype, self.manifest[f"{side}_tokens"])
        return IdSequences(ids, offsets)

    def __len__(self) -> int:
        return len(self.src_seqs)

    def src(self, i: int) -> np.ndarray:
        """Source piece ids of pair i (no </s>)."""
        return self.src_seqs[i]

    def tgt(self, i: int) -> np.ndarray:
        """Target piece ids of pair i (no <s>, </s>)."""
        return self.tgt_seqs[i]

    @property
    def src_lengths(self) -> np.ndarray:
        """Source lengths in pieces, one per pair."""
        return self.src_seqs.lengths

    @property
    def tgt_lengths(self) -> np.ndarray:
        """Target lengths in pieces, one per pair."""
        return self.tgt_seqs.lengths

    @property
    def report(self) -> FilterReport:
        """What the filter kept and dropped when the cache was built."""
        r = self.manifest["report"]
        return FilterReport(total=r["total"], kept=r["kept"], dropped=dict(r["dropped"]))


def _valid_cache(directory: Path, key: str) -> bool:
    """Whether `directory` is a complete cache for `key` (manifest present and matching, file sizes as recorded)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT_VERSION or manifest.get("key") != key:
            return False
        itemsize = np.dtype(manifest["dtype"]).itemsize
        for side in ("src", "tgt"):
            if (directory / f"{side}.ids").stat().st_size != manifest[f"{side}_tokens"] * itemsize:
                return False
            if (directory / f"{side}.offsets").stat().st_size != (manifest["pairs"] + 1) * 8:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------------
# The key


def _file_stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cache_key(
    src_path: Path,
    tgt_path: Path,
    src_model: bytes,
    tgt_model: bytes,
    max_len: int,
    max_ratio: float,
    encoding_errors: str,
    sampling: SubwordSampling | None = None,
) -> tuple[str, dict[str, Any]]:
    """The cache key (hex) and the fields it was made of (stored in the manifest, for inspection)."""
    fields: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "src": _file_stamp(src_path),
        "tgt": _file_stamp(tgt_path),
        "src_model_sha256": hashlib.sha256(src_model).hexdigest(),
        "tgt_model_sha256": hashlib.sha256(tgt_model).hexdigest(),
        "max_len": max_len,
        "max_ratio": float(max_ratio),
        "encoding_errors": encoding_errors,
    }
    if sampling is not None:  # absent otherwise: the caches of unsampled corpora keep their keys
        fields["sampling"] = dataclasses.asdict(sampling)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return key, fields


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding ids 0 .. vocab_size - 1 (padding included): uint16 or uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


# ---------------------------------------------------------------------------------------------------------------------
# Reading the text: streamed, with the same checks and errors as corpus.read_parallel


def count_lines(path: Path) -> int:
    """Lines in a file as `corpus.read_lines` counts them (a last line without a newline counts), read in blocks."""
    lines = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def _decode(raw: bytes, path: str, line: int, errors: str) -> str:
    if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    try:
        text = raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}:{line}: invalid UTF-8 (byte 0x{raw[exc.start]:02x})",
            "convert the file to UTF-8 (e.g. iconv), or pass --encoding-errors replace",
        ) from None
    return text[:-1] if text.endswith("\r") else text


@dataclass
class _RawChunk:
    first_line: int  # 1-based line number of the chunk's first pair
    src: list[bytes]
    tgt: list[bytes]


def _read_chunks(src_path: Path, tgt_path: Path, src: BinaryIO, tgt: BinaryIO, size: int) -> Iterator[_RawChunk]:
    """Chunks of up to `size` raw line pairs (decoded by the encoder); a file ending before the other is an error."""
    line = 1
    while True:
        raw_src = list(itertools.islice(src, size))
        raw_tgt = list(itertools.islice(tgt, size))
        if len(raw_src) != len(raw_tgt):  # the files were counted before; they changed since
            raise DataError(
                f"line counts differ: {src_path} has {line - 1 + len(raw_src) + sum(1 for _ in src)} lines, "
                f"{tgt_path} has {line - 1 + len(raw_tgt) + sum(1 for _ in tgt)}",
                "source and target files must be line-aligned (one sentence pair per line)",
            )
        if not raw_src:
            return
        yield _RawChunk(line, raw_src, raw_tgt)
        line += len(raw_src)


# ---------------------------------------------------------------------------------------------------------------------
# Encoding: one chunk of line pairs -> flat id arrays of the kept pairs


@dataclass
class _Encoded:
    pairs: int
    src_ids: np.ndarray
    src_lens: np.ndarray
    tgt_ids: np.ndarray
    tgt_lens: np.ndarray
    dropped: dict[str, int]


class _ChunkEncoder:
    """Decodes, encodes and filters chunks; built from the model bytes so that what is encoded is what was hashed."""

    def __init__(
        self,
        src_model: bytes,
        tgt_model: bytes,
        max_len: int,
        max_ratio: float,
        dtype: str,
        paths: tuple[str, str],
        encoding_errors: str,
        sampling: SubwordSampling | None = None,
    ) -> None:
        # num_threads=1: the parallelism is the worker processes, not SentencePiece's own threads
        self.src = spm.SentencePieceProcessor(model_proto=src_model, num_threads=1)
        self.tgt = (
            self.src if tgt_model == src_model else spm.SentencePieceProcessor(model_proto=tgt_model, num_threads=1)
        )
        self.max_len = max_len
        self.max_ratio = max_ratio
        self.dtype = np.dtype(dtype)
        self.paths = paths
        self.errors = encoding_errors
        self.sampling = sampling
        self.scores = (piece_scores(self.src), piece_scores(self.tgt)) if sampling else None

    def _encode(self, side: int, lines: list[str], first_line: int) -> list[list[int]]:
        processor = self.tgt if side else self.src
        if self.sampling is None or self.scores is None:
            return processor.encode(lines, out_type=int, num_threads=1)
        s = self.sampling
        return sample_segmentations(processor, lines, self.scores[side], s.alpha, s.nbest, s.rng(first_line, side))

    def __call__(self, chunk: _RawChunk) -> _Encoded:
        src_text = [_decode(raw, self.paths[0], chunk.first_line + k, self.errors) for k, raw in enumerate(chunk.src)]
        tgt_text = [_decode(raw, self.paths[1], chunk.first_line + k, self.errors) for k, raw in enumerate(chunk.tgt)]
        src_ids = self._encode(0, src_text, chunk.first_line)
        tgt_ids = self._encode(1, tgt_text, chunk.first_line)
        keep, report = filter_pairs(src_ids, tgt_ids, self.max_len, self.max_ratio)
        kept_src = [src_ids[i] for i in keep]
        kept_tgt = [tgt_ids[i] for i in keep]
        return _Encoded(
            pairs=report.total,
            src_ids=self._flat(kept_src),
            src_lens=np.fromiter(map(len, kept_src), dtype=np.int64, count=len(keep)),
            tgt_ids=self._flat(kept_tgt),
            tgt_lens=np.fromiter(map(len, kept_tgt), dtype=np.int64, count=len(keep)),
            dropped=report.dropped,
        )

    def _flat(self, seqs: list[list[int]]) -> np.ndarray:
        total = sum(map(len, seqs))
        return np.fromiter(itertools.chain.from_iterable(seqs), dtype=self.dtype, count=total)


# The encoder of a pool worker process, set once by its initializer (state local to that process).
_WORKER_ENCODER: _ChunkEncoder | None = None


def _init_worker(*args: Any) -> None:
    global _WORKER_ENCODER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    _WORKER_ENCODER = _ChunkEncoder(*args)


def _encode_in_worker(chunk: _RawChunk) -> _Encoded | tuple[str, str | None]:
    """The encoded chunk, or a DataError's (message, hint): pickling an exception would lose its hint."""
    assert _WORKER_ENCODER is not None
    try:
        return _WORKER_ENCODER(chunk)
    except DataError as exc:
        return exc.message, exc.hint


def _encoded_chunks(chunks: Iterator[_RawChunk], encoder_args: tuple[Any, ...], workers: int) -> Iterator[_Encoded]:
    """Encode the chunks in order, in this process (workers=1) or on a pool with a bounded number in flight."""
    if workers <= 1:
        encoder = _ChunkEncoder(*encoder_args)
        yield from map(encoder, chunks)
        return
    # spawn, not fork: the caller may hold threads (torch, a progress bar) that a forked child would inherit mid-lock
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=encoder_args) as pool:
        # Pool.imap would read the whole input ahead; a window of pending results bounds the memory instead
        pending: deque[Any] = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= 2 * workers:
                yield _result(pending.popleft().get())
        while pending:
            yield _result(pending.popleft().get())


def _result(result: _Encoded | tuple[str, str | None]) -> _Encoded:
    if isinstance(result, tuple):
        raise DataError(*result)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Building


def _build(
    tmp: Path,
    src_path: Path,
    tgt_path: Path,
    encoder_args: tuple[Any, ...],
    workers: int,
    progress: Callable[[int], object] | None,
) -> dict[str, Any]:
    """Write the id and offset files into `tmp`; returns the counts and the filter report for the manifest."""
    report = FilterReport(dropped=dict.fromkeys(_DROP_REASONS, 0))
    tokens = {"src": 0, "tgt": 0}
    names = ("src.ids", "src.offsets", "tgt.ids", "tgt.offsets")
    with (
        open(src_path, "rb") as src_text,
        open(tgt_path, "rb") as tgt_text,
        open(tmp / names[0], "wb") as src_ids,
        open(tmp / names[1], "wb") as src_offsets,
        open(tmp / names[2], "wb") as tgt_ids,
        open(tmp / names[3], "wb") as tgt_offsets,
    ):
        zero = np.zeros(1, dtype=np.int64).tobytes()
        src_offsets.write(zero)
        tgt_offsets.write(zero)
        chunks = _read_chunks(src_path, tgt_path, src_text, tgt_text, CHUNK_PAIRS)
        for enc in _encoded_chunks(chunks, encoder_args, workers):
            for side, ids, lens, ids_file, offsets_file in (
                ("src", enc.src_ids, enc.src_lens, src_ids, src_offsets),
                ("tgt", enc.tgt_ids, enc.tgt_lens, tgt_ids, tgt_offsets),
            ):
                ids_file.write(ids.tobytes())
                offsets_file.write((np.cumsum(lens) + tokens[side]).astype(np.int64).tobytes())
                tokens[side] += len(ids)
            report.total += enc.pairs
            report.kept += len(enc.src_lens)
            for reason, count in enc.dropped.items():
                report.dropped[reason] = report.dropped.get(reason, 0) + count
            if progress is not None:
                progress(report.total)
    for name in names:
        fsync_path(tmp / name)
    return {
        "pairs": report.kept,
        "src_tokens": tokens["src"],
        "tgt_tokens": tokens["tgt"],
        "report": {"total": report.total, "kept": report.kept, "dropped": report.dropped},
    }


def _remove_leftovers(cache_dir: Path) -> None:
    """Remove build directories of processes that no longer run (killed mid-build)."""
    for path in cache_dir.glob(_BUILD_PREFIX + "*"):
        try:
            pid = int(path.name[len(_BUILD_PREFIX) :].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _remove_superseded(cache_dir: Path, keep: Path, fields: dict[str, Any]) -> None:
    """Remove caches of the same corpus paths made from file versions that no longer exist (they cannot match again)."""
    for path in cache_dir.glob(_PREFIX + "*"):
        if path == keep:
            continue
        try:
            old = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["key_fields"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours to judge (another format, or a cache being replaced)
        same_paths = all(old[s]["path"] == fields[s]["path"] for s in ("src", "tgt"))
        if same_paths and (old["src"] != fields["src"] or old["tgt"] != fields["tgt"]):
            shutil.rmtree(path, ignore_errors=True)


def check_line_counts(src_path: Path, tgt_path: Path) -> None:
    """The error `read_parallel` gives for differing line counts; reads the files in blocks, holds no lines."""
    n_src, n_tgt = count_lines(src_path), count_lines(tgt_path)
    if n_src != n_tgt:
        raise DataError(
            f"line counts differ: {src_path} has {n_src} lines, {tgt_path} has {n_tgt}",
            "source and target files must be line-aligned (one sentence pair per line)",
        )


def open_or_build(
    cache_dir: str | Path,
    src_path: str | Path,
    tgt_path: str | Path,
    src_model: str | Path,
    tgt_model: str | Path | None,
    max_len: int,
    max_ratio: float,
    workers: int | None = None,
    progress: Callable[[int], object] | None = None,
    encoding_errors: str = "strict",
    sampling: SubwordSampling | None = None,
) -> tuple[EncodedCorpus, FilterReport, bool]:
    """Open the cached encoded corpus for these files, tokenizer(s) and filter settings, building it when needed.

    `tgt_model=None` means a joint tokenizer. `workers` encoding processes (None: one per available core; 1: no
    pool). `progress(pairs_read)` is called after each chunk while building. Returns the corpus, the filter report
    and whether the cache was built by this call. The files are checked as `read_parallel` checks them (line counts,
    UTF-8 unless `encoding_errors="replace"`) and the pairs filtered as `filter_pairs` filters them. With `sampling`,
    every sentence is segmented by `subword.sample_segmentations` (a unigram model is needed: DataError otherwise);
    the filter then judges the sampled lengths.

    Workers are started with multiprocessing's spawn method, which imports the caller's main module again: a script
    calling this with workers > 1 needs the `if __name__ == "__main__":` guard (the seqtool CLI has it).
    """
    # imported here: seqtool.tokenizer imports torch, which the spawned workers (importing this module) need not
    from seqtool.tokenizer import SentencePieceModel

    cache_dir, src_path, tgt_path = Path(cache_dir), Path(src_path), Path(tgt_path)
    check_readable(src_path)
    check_readable(tgt_path)
    tgt_model = src_model if tgt_model is None else tgt_model
    models = [SentencePieceModel(src_model), SentencePieceModel(tgt_model)]  # checks the files and special ids
    model_bytes = [m.path.read_bytes() for m in models]
    if sampling is not None:
        for model in models:
            try:
                check_samplable(spm.SentencePieceProcessor(model_file=str(model.path)), str(model.path))
            except ValueError as exc:
                raise DataError(str(exc), "set data.subword_alpha: 0, or train a unigram tokenizer") from None
    key, fields = _cache_key(src_path, tgt_path, *model_bytes, max_len, max_ratio, encoding_errors, sampling)
    final = cache_dir / f"{_PREFIX}{key[:24]}"
    if _valid_cache(final, key):
        corpus = EncodedCorpus(final)
        return corpus, corpus.report, False

    check_line_counts(src_path, tgt_path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(cache_dir)
    dtype = id_dtype(max(m.vocab_size for m in models))
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f"{_BUILD_PREFIX}{os.getpid()}-"))
    try:
        paths = (str(src_path), str(tgt_path))
        encoder_args = (*model_bytes, max_len, max_ratio, dtype.str, paths, encoding_errors, sampling)
        counts = _build(tmp, src_path, tgt_path, encoder_args, workers, progress)
        if _file_stamp(src_path) != fields["src"] or _file_stamp(tgt_path) != fields["tgt"]:
            raise DataError(
                f"{src_path} or {tgt_path} changed while the encoded cache was being built", "run the command again"
            )
        manifest = {"format": FORMAT_VERSION, "key": key, "dtype": dtype.name, **counts, "key_fields": fields}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        fsync_path(tmp / MANIFEST)
        fsync_path(tmp)
        if final.exists():  # an invalid leftover, or a cache another process has just completed
            if _valid_cache(final, key):
                shutil.rmtree(tmp)
                corpus = EncodedCorpus(final)
                return corpus, corpus.report, False
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _valid_cache(final, key):  # unless another builder won the race: theirs is as good as ours
                raise
        fsync_path(cache_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _remove_superseded(cache_dir, final, fields)
    corpus = EncodedCorpus(final)
    return corpus, corpus.report, True
