"""Text in -> text out: clean, encode, sort by length, batch by a token budget, search, restore order, decode.

One line in = one line out, always: an empty (or whitespace-only) line gives an empty line without
touching the model; control characters and unpaired surrogates are cleaned away before SentencePiece
sees them; a line longer than the input limit is truncated (and marked so), never dropped.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from seqtool.config import Config, DecodeConfig
from seqtool.data.batching import pad_sequences
from seqtool.decode.languages import LanguageTag, requested_tag
from seqtool.decode.search import BeamSearch, Hypothesis, SearchConfig, search
from seqtool.errors import ConfigError, check
from seqtool.models.base import Seq2SeqModel
from seqtool.runtime import autocast, decode_parallelism, set_threads
from seqtool.tokenizer import Tokenizer

if TYPE_CHECKING:
    from seqtool.decode.scoring import PairScore

_DECODE = DecodeConfig()  # the defaults live in config.py only

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # exactly Unicode category Cc (tab, CR, NUL, ESC, C1 controls ...)
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_line(line: str) -> str:
    """The line as SentencePiece should see it (it rejects unpaired surrogates and would keep a NUL as a piece).

    Control characters become spaces, surrogate code points are joined into the character they encode (U+FFFD
    when unpaired), and surrounding whitespace is stripped.
    """
    if _SURROGATE.search(line):
        line = line.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return _CONTROL.sub(" ", line).strip()


def split_lines(data: bytes) -> tuple[list[str], int | None]:
    """Split UTF-8 bytes into lines as `read_lines` does (BOM dropped, LF or CRLF endings, no line after a final LF).

    Invalid UTF-8 is replaced by U+FFFD; also returns the 1-based line of the first invalid byte (None if none).
    """
    try:
        text, bad_line = data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        text, bad_line = data.decode("utf-8", errors="replace"), data.count(b"\n", 0, exc.start) + 1
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline does not start another line
    return [line.removesuffix("\r") for line in lines], bad_line


def split_pairs(lines: Sequence[str]) -> tuple[list[str], list[str]]:
    """`SOURCE<TAB>TARGET` lines -> sources and targets (split at the first TAB; no TAB: an empty target)."""
    sources, targets = [], []
    for line in lines:
        source, _, target = line.partition("\t")
        sources.append(source)
        targets.append(target)
    return sources, targets


def length_batches(lengths: Sequence[int], batch_tokens: int, beam: int = 1) -> Iterator[list[int]]:
    """Indices sorted by length, grouped so that rows × longest × beam stays within the token budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    longest = 0
    for i in order:
        size = (lengths[i] + 1) * beam
        if batch and max(longest, size) * (len(batch) + 1) > batch_tokens:
            yield batch
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, size)
    if batch:
        yield batch


def translate_ids(
    model: Seq2SeqModel,
    src_ids: Sequence[Sequence[int]],
    cfg: SearchConfig,
    batch_tokens: int = _DECODE.batch_tokens,
    device: torch.device | None = None,
    precision: str = "fp32",
    workers: int = 1,
    first_line: int = 0,
    prefixes: Sequence[Sequence[int]] | None = None,
) -> list[list[Hypothesis]]:
    """Search every source (ids without </s>) and return its hypotheses in input order; empty sources give [].

    Source i is line `first_line + i` of the input, which seeds its samples when `cfg.sample` (see sampling.py);
    with `prefixes`, its outputs start with the target ids `prefixes[i]` (the rest is searched).

    With `workers` > 1, that many batches are searched at once, each in its own thread. On a CPU this pays for beam
    search when each worker has its own core (torch.set_num_threads(cores // workers)): a small model's ops are too
    short to keep two cores busy, two batches are not. The batches are the same either way, so are the outputs.
    """
    check(workers >= 1, f"workers must be at least 1, got {workers}", kind=ConfigError)
    device = device or next(model.parameters()).device
    results: list[list[Hypothesis]] = [[] for _ in src_ids]
    todo = [i for i, ids in enumerate(src_ids) if len(ids) > 0]
    batches = [
        [todo[j] for j in batch]
        for batch in length_batches([len(src_ids[i]) for i in todo], batch_tokens, cfg.rows_per_sentence)
    ]

    @torch.inference_mode()
    def search_batch(rows: list[int]) -> list[list[Hypothesis]]:
        src = pad_sequences([src_ids[i] for i in rows], model.specials.pad, suffix=model.specials.eos).to(device)
        prefix = None
        if prefixes is not None and any(prefixes[i] for i in rows):
            prefix = pad_sequences([prefixes[i] for i in rows], -1).to(device)
        with autocast(device, precision):  # autocast and inference mode are per thread: set here
            return search(model, src, cfg, [first_line + i for i in rows], prefix)

    if workers == 1 or len(batches) < 2:
        found = map(search_batch, batches)
        for rows, hyps in zip(batches, found, strict=True):
            for row, hyp in zip(rows, hyps, strict=True):
                results[row] = hyp
        return results
    # the longest batches first, so that no worker is left with a long one at the end
    batches.reverse()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seqtool-decode") as pool:
        futures = [pool.submit(search_batch, rows) for rows in batches]
        try:
            for rows, future in zip(batches, futures, strict=True):
                for row, hyp in zip(rows, future.result(), strict=True):
                    results[row] = hyp
        except BaseException:
            for future in futures:
                future.cancel()  # on an error or Ctrl-C, start no more batches
            raise
    return results


@dataclass
class Translation:
    """The output for one input line."""

    text: str
    log_prob: float
    score: float
    truncated: bool = False  # the source line was cut to `max_input_len` pieces before the search
    alignment: str | None = None  # Pharaoh word alignment, when asked for (see `seqtool.decode.alignment`)


def encode_sources(
    tokenizer: Tokenizer, lines: Sequence[str], max_input_len: int | None, tag: int | None = None
) -> tuple[list[list[int]], list[bool]]:
    """Both engines' input side: `clean_line`, encode, put the language `tag` id in front (when given; not on an
    empty line), cut to `max_input_len` pieces, tag included (None: no limit); returns the ids and, per line,
    whether it was cut."""
    check(
        max_input_len is None or max_input_len >= 1,
        f"max_input_len must be at least 1, got {max_input_len}",
        kind=ConfigError,
    )
    src_ids = tokenizer.src.encode(clean_line(line) for line in lines)
    if tag is not None:
        src_ids = [[tag, *ids] if ids else ids for ids in src_ids]
    truncated = [max_input_len is not None and len(ids) > max_input_len for ids in src_ids]
    return [ids[:max_input_len] for ids in src_ids], truncated


def encode_prefixes(tokenizer: Tokenizer, prefixes: Sequence[str] | None, lines: int) -> list[list[int]] | None:
    """Both engines' target prefixes: the target pieces of each (cleaned) prefix text, or None without prefixes."""
    if prefixes is None:
        return None
    check(len(prefixes) == lines, f"{len(prefixes)} prefixes for {lines} lines", kind=ConfigError)
    return tokenizer.tgt.encode(clean_line(prefix) for prefix in prefixes)


def keep_prefixes(
    tokenizer: Tokenizer, results: list[list[Translation]], prefixes: Sequence[str] | None
) -> list[list[Translation]]:
    """Both engines: each translation starts with its prefix text verbatim, even where the prefix's pieces do not
    decode back to it (characters outside the vocabulary, normalisation): their decoding is replaced by the text."""
    if prefixes is None:
        return results
    for nbest, prefix in zip(results, prefixes, strict=True):
        prefix = clean_line(prefix)
        if not prefix:
            continue
        (decoded,) = tokenizer.tgt.decode(tokenizer.tgt.encode([prefix]))
        for translation in nbest:
            if translation.text and not translation.text.startswith(prefix):
                rest = translation.text[len(decoded) :] if translation.text.startswith(decoded) else translation.text
                translation.text = prefix + rest
    return results


def decode_hypotheses(
    tokenizer: Tokenizer, hyps: Sequence[Sequence[Hypothesis]], truncated: Sequence[bool]
) -> list[list[Translation]]:
    """Both engines' output side: n-best lists of text (through `clean_line`); an empty source gives one empty
    Translation."""
    out: list[list[Translation]] = []
    for nbest, cut in zip(hyps, truncated, strict=True):
        if not nbest:
            out.append([Translation("", 0.0, 0.0)])
            continue
        texts = tokenizer.tgt.decode([h.tokens for h in nbest])
        out.append([Translation(clean_line(t), h.log_prob, h.score, cut) for t, h in zip(texts, nbest, strict=True)])
    return out


class Translator:
    """A model and its tokenizer, turning text lines into translations (seqtool's engine; see `TranslatorLike`).

    `threads` (0: torch's setting when the translator is made) are shared out among `workers` batches searched at
    once, chosen per search by `decode_parallelism` when 0 (beam search gains from parallel batches on a CPU, greedy
    search does not). `config` is the run's config (default: the schema's defaults), whose `decode` section gives
    the search defaults; `warnings` says what loading changed from what was asked (see `decode.load_translator`).
    """

    engine = "torch"

    def __init__(
        self,
        model: Seq2SeqModel,
        tokenizer: Tokenizer,
        device: torch.device,
        precision: str = "fp32",
        *,
        config: Config | None = None,
        threads: int = 0,
        workers: int = 1,
        warnings: Sequence[str] = (),
    ) -> None:
        check(
            threads >= 0 and workers >= 0,
            f"threads and workers must be >= 0, got {threads}, {workers}",
            kind=ConfigError,
        )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        # the autocast to run under: none for a model whose weights are bf16 already (it would only add casts)
        self.autocast_precision = "fp32" if next(model.parameters()).dtype == torch.bfloat16 else precision
        self.config = config if config is not None else Config()
        self.threads = threads or torch.get_num_threads()  # in all, fixed now: `translate` changes torch's setting
        self.workers = workers  # 0 = per search (see `parallelism`)
        self.warnings = list(warnings)

    def parallelism(self, cfg: SearchConfig) -> tuple[int, int]:
        """(workers, threads per worker) of a search with `cfg` (see `decode_parallelism`)."""
        greedy = cfg.greedy_like and not cfg.sample  # sampling gains from parallel batches (measured 1.46x)
        return decode_parallelism(self.threads, self.workers, self.device.type == "cpu", greedy)

    def translate(
        self,
        lines: Sequence[str],
        cfg: SearchConfig,
        batch_tokens: int | None = None,
        max_input_len: int | None = None,
        first_line: int = 0,
        prefixes: Sequence[str] | None = None,
        align: bool = False,
    ) -> list[list[Translation]]:
        """Translate lines; each gets its n-best list (one empty Translation for an empty line), in input order.

        Lines go through `clean_line` first. A line of more than `max_input_len` source pieces (None: no limit) is
        cut to that many before the search; its translations are marked `truncated`. Translations go through
        `clean_line` too, so none holds a line break (a target model with byte pieces could decode one).
        `batch_tokens` None is the config's decode.batch_tokens. Line i is line `first_line + i` of the input (it seeds
        its samples with `cfg.sample`). With `prefixes`, the translations of line i start with the target text
        `prefixes[i]` ("" for none); only the rest is searched. With `align`, each translation gets its word
        alignment to the source (see `seqtool.decode.alignment`).
        """
        tag = self.language_tag(cfg.tgt_lang)
        src_ids, truncated = encode_sources(self.tokenizer, lines, max_input_len, tag.src)
        workers, threads_per_worker = self.parallelism(cfg)
        if torch.get_num_threads() != threads_per_worker:
            set_threads(threads_per_worker)  # process-wide: the threads of each worker
        budget = self.config.decode.batch_tokens if batch_tokens is None else batch_tokens
        prefix_ids = tag.prefixes(encode_prefixes(self.tokenizer, prefixes, len(lines)), len(lines))
        hyps = translate_ids(
            self.model, src_ids, cfg, budget, self.device, self.autocast_precision, workers, first_line, prefix_ids
        )
        found = tag.strip(hyps)
        results = keep_prefixes(self.tokenizer, decode_hypotheses(self.tokenizer, found, truncated), prefixes)
        if align:
            self._align(src_ids, hyps, results, tag)
        return results

    @property
    def languages(self) -> list[str]:
        """The target languages of a multilingual model (its run's tagged corpora); empty without tags."""
        return self.config.data.languages()

    def language_tag(self, tgt_lang: str) -> LanguageTag:
        """The tag asking for `tgt_lang` and its side (see `decode.languages.requested_tag`)."""
        return requested_tag(self.tokenizer, tgt_lang, self.languages, self.config.data.tag_side)

    def _align(
        self,
        src_ids: Sequence[Sequence[int]],
        hyps: Sequence[Sequence[Hypothesis]],
        results: list[list[Translation]],
        tag: LanguageTag,
    ) -> None:
        """Fill in the word alignment of every translation of `results` (the hypotheses `hyps` of `src_ids`, with
        their target tag when `tag` has one)."""
        from seqtool.decode.alignment import align_translations

        pairs = [(i, j) for i, nbest in enumerate(hyps) for j in range(len(nbest))]
        found = align_translations(
            self.model,
            self.tokenizer,
            [src_ids[i] for i, _ in pairs],
            [hyps[i][j].tokens for i, j in pairs],
            self.device,
            self.autocast_precision,
            tag.src is not None,
            tag.tgt is not None,
        )
        for (i, j), alignment in zip(pairs, found, strict=True):
            results[i][j].alignment = alignment
        for nbest in results:
            for translation in nbest:
                if translation.alignment is None:
                    translation.alignment = ""

    def score(
        self,
        sources: Sequence[str],
        targets: Sequence[str],
        normalize: str = "gnmt",
        alpha: float | None = None,
        batch_tokens: int | None = None,
        max_len: int | None = None,
        tgt_lang: str = "",
    ) -> list[PairScore]:
        """The model's score of each (source, target) pair, in order (see `seqtool.decode.scoring`); `alpha` None is
        the config's decode.length_penalty, `max_len` None its decode.max_input_len; `tgt_lang` the target language
        of a multilingual model."""
        from seqtool.decode.scoring import forced_log_probs, score_pairs

        dc = self.config.decode
        set_threads(self.threads)
        return score_pairs(
            self.tokenizer,
            sources,
            targets,
            lambda src, tgt: forced_log_probs(self.model, src, tgt, self.device, self.autocast_precision),
            normalize,
            dc.length_penalty if alpha is None else alpha,
            batch_tokens or dc.batch_tokens,
            max_len or dc.max_input_len,
            self.language_tag(tgt_lang),
        )

    def stream(self, cfg: SearchConfig, max_input_len: int | None = None) -> TranslationStream | None:
        """A beam search that lines may join while it runs (see `TranslationStream`); None for greedy search and
        sampling."""
        if cfg.greedy_like:
            return None
        return TranslationStream(self, cfg, max_input_len)


class TranslationStream:
    """Lines joining a running beam search (continuous batching): `admit` lines, `step` until none is live.

    Each call runs in the calling thread with the translator's precision and threads per worker; a server runs one
    stream per decoding thread. A line gets exactly what `Translator.translate` gives it, up to float rounding.
    """

    def __init__(self, translator: Translator, cfg: SearchConfig, max_input_len: int | None) -> None:
        self.translator = translator
        self.cfg = cfg
        self.max_input_len = max_input_len
        self.searcher = BeamSearch(translator.model, cfg, translator.device)
        self.tag = translator.language_tag(cfg.tgt_lang)
        self._truncated: dict[Hashable, bool] = {}
        self._threads = translator.parallelism(cfg)[1]

    @property
    def live(self) -> int:
        """Lines being searched."""
        return self.searcher.live

    def admit(self, lines: Sequence[str], keys: Sequence[Hashable]) -> list[tuple[Hashable, list[Translation]]]:
        """Start searching `lines` (each with its key); empty lines are done at once and returned here."""
        src_ids, truncated = encode_sources(self.translator.tokenizer, lines, self.max_input_len, self.tag.src)
        empty = [(key, [Translation("", 0.0, 0.0)]) for key, ids in zip(keys, src_ids, strict=True) if not ids]
        rows = [i for i, ids in enumerate(src_ids) if ids]
        if rows:
            sp = self.translator.model.specials
            device = self.translator.device
            src = pad_sequences([src_ids[i] for i in rows], sp.pad, suffix=sp.eos).to(device)
            prefix = None if self.tag.tgt is None else torch.full((len(rows), 1), self.tag.tgt, device=device)
            with self._running():
                self.searcher.admit(src, [keys[i] for i in rows], prefix)
            self._truncated.update((keys[i], truncated[i]) for i in rows)
        return empty

    def step(self) -> list[tuple[Hashable, list[Translation]]]:
        """One token more for every live line; the (key, n-best list) of the lines that are now done."""
        with self._running():
            done = self.searcher.step()
        if not done:
            return []
        cut = [self._truncated.pop(key) for key, _ in done]
        found = decode_hypotheses(self.translator.tokenizer, self.tag.strip([hyps for _, hyps in done]), cut)
        return [(key, nbest) for (key, _), nbest in zip(done, found, strict=True)]

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        if torch.get_num_threads() != self._threads:
            set_threads(self._threads)
        with torch.inference_mode(), autocast(self.translator.device, self.translator.autocast_precision):
            yield


def truncation_warning(results: Sequence[Sequence[Translation]], limit: int) -> str | None:
    """The warning about input lines cut to `limit` pieces (numbered from 1, the first five named), or None."""
    cut = [i + 1 for i, nbest in enumerate(results) if nbest and nbest[0].truncated]
    if not cut:
        return None
    many = len(cut) > 1
    shown = ", ".join(map(str, cut[:5])) + (", ..." if len(cut) > 5 else "")
    return (
        f"{len(cut)} input line{'s' * many} longer than {limit} pieces {'were' if many else 'was'} "
        f"truncated (line{'s' * many} {shown})"
    )


def format_translations(
    results: Sequence[Sequence[Translation]], nbest: int = 1, scores: bool = False, first_line: int = 1
) -> list[str]:
    """Output lines: the best text per input line; with scores, `TEXT<TAB>LOG_PROB`; with nbest > 1, up to `nbest`
    lines per input line as `LINE<TAB>TEXT<TAB>SCORE` (LINE counts input lines from `first_line`). Translations with
    an alignment get it as a last column."""

    def align(t: Translation) -> str:
        return "" if t.alignment is None else f"\t{t.alignment}"

    if nbest == 1:
        return [(f"{r[0].text}\t{r[0].log_prob:.4f}" if scores else r[0].text) + align(r[0]) for r in results]
    return [
        f"{number}\t{t.text}\t{t.score:.4f}{align(t)}"
        for number, nbest_list in enumerate(results, start=first_line)
        for t in nbest_list[:nbest]
    ]
