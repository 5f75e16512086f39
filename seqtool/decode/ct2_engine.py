"""The CTranslate2 engine: `seqtool translate --engine ctranslate2` on a model written by `seqtool export`.

Same contract as `Translator` in translate.py (same tokenizer, `clean_line`, truncation, one line in = one line out,
token-budget batches sorted by length), with CTranslate2's search instead of ours. Where the two differ:

- Maximum length: CTranslate2 takes one `max_decoding_length` per call, so each length-sorted batch gets
  floor(a * its longest source + b) (source lengths counting </s>, as ours do); a hypothesis longer than its own
  sentence's limit is then cut to it and rescored with </s> appended (CTranslate2's `score_batch`), which is what
  our search does when it forces </s> at the limit. Greedy outputs are therefore the same as ours.
- Length penalty: CTranslate2 ranks finished beam hypotheses by log_prob / n ** alpha (n = generated tokens, </s>
  included), ours by GNMT's log_prob / ((5 + n) / 6) ** alpha, which prefers shorter outputs. CTranslate2 searches
  with its own rule, returns all `beam` finished hypotheses, and these are then ranked by ours (`gnmt_score`), so
  that both engines pick by the same rule among what they found.
- Log-probabilities: CTranslate2 renormalises the softmax after suppressing <s> and <pad>, ours does not; the
  difference is the tiny probability mass of those two tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqtool.config import Config
from seqtool.decode.search import Hypothesis, SearchConfig
from seqtool.decode.translate import (
    Translation,
    decode_hypotheses,
    encode_prefixes,
    encode_sources,
    keep_prefixes,
    length_batches,
)
from seqtool.errors import CheckpointError, ConfigError, SeqtoolError, check
from seqtool.export.ctranslate2 import MIN_POSITIONS, check_exported, import_ctranslate2, vocabulary
from seqtool.runtime import decode_parallelism
from seqtool.tokenizer import Tokenizer

if TYPE_CHECKING:
    from seqtool.decode.languages import LanguageTag
    from seqtool.decode.scoring import PairScore

DEVICES = ("cpu", "cuda")


def resolve_ct2_device(name: str) -> str:
    """seqtool's --device -> CTranslate2's: auto -> cuda when CTranslate2 sees a GPU, else cpu; no mps."""
    ct2 = import_ctranslate2()
    gpus = ct2.get_cuda_device_count()
    if name == "auto":
        return "cuda" if gpus > 0 else "cpu"
    if name == "cuda" and gpus == 0:
        raise SeqtoolError("device 'cuda' requested but CTranslate2 sees no CUDA device", "use --device cpu or auto")
    if name not in DEVICES:
        raise SeqtoolError(f"CTranslate2 does not run on {name!r}", f"use --device {' or '.join(DEVICES)}")
    return name


class EngineError(SeqtoolError):
    """CTranslate2 failed while translating."""

    exit_code = 1


class CTranslate2Translator:
    """A CTranslate2 model directory and the run's tokenizer, turning text lines into translations."""

    engine = "ctranslate2"

    def __init__(
        self,
        model_dir: Path,
        tokenizer: Tokenizer,
        device: str = "cpu",
        threads: int = 0,
        workers: int = 0,
        *,
        config: Config | None = None,
    ) -> None:
        """Load the model: `threads` CPU threads in all, shared by `workers` batches at once (decode_parallelism).

        `config` is the run's config (default: the schema's defaults), whose `decode` section gives the search
        defaults. The workers are CTranslate2's replicas, fixed when it loads, so the same for every search.
        """
        ct2 = self.ct2 = import_ctranslate2()
        check(device in DEVICES, f"unknown CTranslate2 device {device!r}", f"choose one of {', '.join(DEVICES)}")
        meta = check_exported(model_dir, tokenizer)
        self.positions: int = int(meta.get("positions", MIN_POSITIONS))
        self.tokenizer = tokenizer
        self.src_vocab = vocabulary(tokenizer.src)
        tgt_vocab = self.tgt_vocab = vocabulary(tokenizer.tgt)
        self.tgt_index = {piece: i for i, piece in enumerate(tgt_vocab)}
        sp = tokenizer.specials
        self.eos_token = tgt_vocab[sp.eos]
        self.suppress = [[tgt_vocab[sp.bos]], [tgt_vocab[sp.pad]]]  # our search never emits these either
        self.config = config if config is not None else Config()
        self.warnings: list[str] = []
        self.device = device
        self.workers, self.threads_per_worker = decode_parallelism(threads, workers, device == "cpu")
        try:
            self.translator = ct2.Translator(
                str(model_dir), device=device, intra_threads=self.threads_per_worker, inter_threads=self.workers
            )
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"CTranslate2 cannot load {model_dir}: {exc}") from None

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

        As `Translator.translate`: lines go through `clean_line`, a line of more than `max_input_len` source pieces
        is cut to that many (its translations marked `truncated`), and translations go through `clean_line` too.
        `batch_tokens` None is the config's decode.batch_tokens. Sampling (`cfg.sample`) passes the same options to
        CTranslate2, seeded with `cfg.seed + first_line` per call: reproducible for the same input and batches, but
        (unlike seqtool's engine) not independent of the batching. `prefixes` go to CTranslate2's `target_prefix`.
        """
        if align:
            raise SeqtoolError(
                "--align needs --engine torch", "seqtool's engine aligns from the model's cross-attention"
            )
        if cfg.sample:
            self.ct2.set_random_seed(cfg.seed + first_line)
        tag = self.language_tag(cfg.tgt_lang)
        src_ids, truncated = encode_sources(self.tokenizer, lines, max_input_len, tag.src)
        prefix_ids = tag.prefixes(encode_prefixes(self.tokenizer, prefixes, len(lines)), len(lines))
        hyps = tag.strip(self.translate_ids(src_ids, cfg, batch_tokens, prefix_ids))
        return keep_prefixes(self.tokenizer, decode_hypotheses(self.tokenizer, hyps, truncated), prefixes)

    def translate_ids(
        self,
        src_ids: Sequence[Sequence[int]],
        cfg: SearchConfig,
        batch_tokens: int | None = None,
        prefixes: Sequence[Sequence[int]] | None = None,
    ) -> list[list[Hypothesis]]:
        """As `translate.translate_ids`: each source's hypotheses (ids without </s>), best first by our GNMT score,
        in input order; an empty source gives []. `batch_tokens` None is the config's decode.batch_tokens."""
        if batch_tokens is None:
            batch_tokens = self.config.decode.batch_tokens
        if cfg.sample:
            from seqtool.decode.sampling import check_sampling_config

            check_sampling_config(cfg)
        else:
            check(1 <= cfg.nbest <= cfg.beam, f"nbest must be between 1 and beam ({cfg.beam})", kind=ConfigError)
        longest = max((len(ids) for ids in src_ids), default=0)
        if longest + 1 > self.positions:
            raise ConfigError(
                f"an input line has {longest} pieces; this CTranslate2 model has positions for {self.positions - 1}",
                f"pass --max-input-len {self.positions - 1} (longer lines are then truncated)",
            )
        hyps: list[list[Hypothesis]] = [[] for _ in src_ids]
        todo = [i for i, ids in enumerate(src_ids) if ids]
        batches = [
            [todo[j] for j in b]
            for b in length_batches([len(src_ids[i]) for i in todo], batch_tokens, cfg.rows_per_sentence)
        ]
        # every batch is handed to CTranslate2 at once: its `workers` replicas take them in parallel
        prefixed = prefixes is not None and any(prefixes)
        pending = [
            self._submit(
                [list(src_ids[i]) for i in rows], cfg, None if prefixes is None else [prefixes[i] for i in rows]
            )
            for rows in reversed(batches)
        ]
        for rows, (pieces, limits, futures) in zip(reversed(batches), pending, strict=True):
            for row, nbest in zip(rows, self._collect(pieces, limits, futures, cfg, prefixed), strict=True):
                hyps[row] = [Hypothesis(tokens=ids, score=score, log_prob=lp) for ids, lp, score in nbest]
        return hyps

    def parallelism(self, cfg: SearchConfig) -> tuple[int, int]:
        """(workers, threads per worker): CTranslate2's replicas and their threads, the same for every search."""
        return self.workers, self.threads_per_worker

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
        """The model's score of each (source, target) pair, in order, by CTranslate2's `score_batch` (as
        `Translator.score`)."""
        from seqtool.decode.scoring import score_pairs

        dc = self.config.decode
        return score_pairs(
            self.tokenizer,
            sources,
            targets,
            self._score_batch,
            normalize,
            dc.length_penalty if alpha is None else alpha,
            batch_tokens or dc.batch_tokens,
            min(max_len or dc.max_input_len, self.positions - 1),
            self.language_tag(tgt_lang),
        )

    @property
    def languages(self) -> list[str]:
        """The target languages of a multilingual model (its run's tagged corpora); empty without tags."""
        return self.config.data.languages()

    def language_tag(self, tgt_lang: str) -> LanguageTag:
        """The tag asking for `tgt_lang` and its side (see `decode.languages.requested_tag`)."""
        from seqtool.decode.languages import requested_tag

        return requested_tag(self.tokenizer, tgt_lang, self.languages, self.config.data.tag_side)

    def _score_batch(self, src_ids: list[Sequence[int]], tgt_ids: list[Sequence[int]]) -> list[float]:
        """The log-probability of each target's pieces and </s> (a `scoring.BatchScorer`), by `score_batch`."""
        try:
            scored = self.translator.score_batch(
                [[self.src_vocab[t] for t in ids] for ids in src_ids],
                [[self.tgt_vocab[t] for t in ids] for ids in tgt_ids],
                max_input_length=0,
            )
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"CTranslate2 failed: {exc}") from None
        return [float(sum(result.log_probs)) for result in scored]

    def stream(self, cfg: SearchConfig, max_input_len: int | None = None) -> None:
        """None: CTranslate2 searches whole batches (a server decodes in rounds of `translate`)."""
        return None

    def _submit(
        self, sources: list[list[int]], cfg: SearchConfig, prefixes: list[Sequence[int]] | None = None
    ) -> tuple[list[list[str]], list[int], list[Any]]:
        """Start the search of one batch of source ids (without </s>): its pieces, length limits and async results."""
        # our limit: floor(a * src_len + b) target tokens before </s>, src_len counting the </s> of the source
        limits = [max(0, math.floor(cfg.max_len_a * (len(ids) + 1) + cfg.max_len_b)) for ids in sources]
        pieces = [[self.src_vocab[i] for i in ids] for ids in sources]
        sampling: dict[str, Any] = {}
        if prefixes is not None and any(prefixes):  # a prefix is never cut (as in our search)
            limits = [max(limit, len(prefix)) for limit, prefix in zip(limits, prefixes, strict=True)]
            sampling["target_prefix"] = [[self.tgt_vocab[i] for i in prefix] for prefix in prefixes]
        if cfg.sample:  # CTranslate2's top-k 1 is greedy and 0 is every token
            top_k = 1 if cfg.temperature == 0.0 else cfg.top_k
            temperature = cfg.temperature or 1.0
            sampling |= {"sampling_topk": top_k, "sampling_topp": cfg.top_p, "sampling_temperature": temperature}
        try:
            futures = self.translator.translate_batch(
                pieces,
                beam_size=1 if cfg.sample else cfg.beam,
                num_hypotheses=cfg.nbest if cfg.sample else cfg.beam,  # beam: all, ranked by our penalty in _collect
                **sampling,
                length_penalty=self._alpha(cfg),
                max_input_length=0,  # truncation is ours (max_input_len), done before
                max_decoding_length=max(1, min(max(limits), self.positions)),
                min_decoding_length=0,
                suppress_sequences=self.suppress,
                return_end_token=True,
                return_scores=True,
                asynchronous=True,
            )
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"CTranslate2 failed: {exc}") from None
        return pieces, limits, futures

    @staticmethod
    def _alpha(cfg: SearchConfig) -> float:
        greedy_like = cfg.sample or cfg.beam == 1
        return 0.0 if greedy_like else cfg.length_penalty  # our greedy search and sampling do not normalise

    def _collect(
        self, pieces: list[list[str]], limits: list[int], futures: list[Any], cfg: SearchConfig, prefixed: bool
    ) -> list[list[tuple[list[int], float, float]]]:
        """(tokens, log_prob, score) n-best lists, best first, of a batch started by `_submit` (`prefixed`: with
        target prefixes)."""
        alpha = self._alpha(cfg)
        try:
            results = [future.result() for future in futures]
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"CTranslate2 failed: {exc}") from None
        nbests: list[list[tuple[list[int], float, float]]] = []
        rescore: list[tuple[int, int, list[int]]] = []  # (sentence, rank, tokens) cut to their sentence's limit
        for s, (result, limit) in enumerate(zip(results, limits, strict=True)):
            nbest = []
            for rank, (tokens, score) in enumerate(zip(result.hypotheses, result.scores, strict=True)):
                ended = bool(tokens) and tokens[-1] == self.eos_token
                ids = [self.tgt_index[t] for t in (tokens[:-1] if ended else tokens)]
                generated = len(ids) + ended
                log_prob = score * generated**alpha if generated else 0.0
                if len(ids) >= limit or cfg.sample or prefixed:  # at (or past) the limit: ours would force </s>
                    ids = ids[:limit]  # (samples and prefixes: the log-probability of the whole output, by the model)
                    rescore.append((s, rank, ids))
                nbest.append((ids, log_prob, gnmt_score(log_prob, len(ids) + 1, alpha)))
            nbests.append(nbest)
        if rescore:
            self._rescore(pieces, rescore, nbests, alpha)
        if cfg.sample:
            return nbests  # samples in the order drawn, repeats kept
        return [_unique(sorted(nbest, key=lambda hyp: -hyp[2]))[: cfg.nbest] for nbest in nbests]

    def _rescore(
        self,
        pieces: list[list[str]],
        rescore: list[tuple[int, int, list[int]]],
        nbests: list[list[tuple[list[int], float, float]]],
        alpha: float,
    ) -> None:
        """Log-probability and score of `tokens </s>` for hypotheses cut at their limit."""
        targets = [[self.tgt_vocab[i] for i in ids] for _, _, ids in rescore]
        try:
            scored = self.translator.score_batch([pieces[s] for s, _, _ in rescore], targets, max_input_length=0)
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"CTranslate2 failed: {exc}") from None
        for (s, rank, ids), result in zip(rescore, scored, strict=True):
            log_prob = float(sum(result.log_probs))  # the tokens and </s>
            nbests[s][rank] = (ids, log_prob, gnmt_score(log_prob, len(ids) + 1, alpha))


def gnmt_score(log_prob: float, length: int, alpha: float) -> float:
    """Our search's ranking score of a hypothesis of `length` tokens (</s> included): GNMT's length penalty."""
    return log_prob / ((5.0 + length) / 6.0) ** alpha


def _unique(nbest: list[tuple[list[int], float, float]]) -> list[tuple[list[int], float, float]]:
    """The n-best list without repeats (hypotheses that differed only past the length limit), best first."""
    seen: set[tuple[int, ...]] = set()
    out = []
    for hyp in nbest:
        if tuple(hyp[0]) not in seen:
            seen.add(tuple(hyp[0]))
            out.append(hyp)
    return out


def load_ct2_translator(
    run_dir: Path, model_dir: Path | None = None, device: str = "cpu", threads: int = 0, workers: int = 0
) -> CTranslate2Translator:
    """The CTranslate2 translator of a run (model in `model_dir`, default RUN_DIR/ctranslate2), with its config.

    Prefer `seqtool.decode.load_translator`, which also checks the options of both engines."""
    from seqtool.export.ctranslate2 import transformer_run

    run, cfg = transformer_run(run_dir, "--engine ctranslate2")
    import_ctranslate2()
    target = model_dir or run.root / "ctranslate2"
    if not target.exists():
        raise CheckpointError(
            f"no CTranslate2 model at {target}",
            f"export it first: seqtool export {run.root} --format ctranslate2 -o {target}",
        )
    src_path, tgt_path = run.tokenizer_paths(cfg.tokenizer.joint)
    tokenizer = Tokenizer.load(src_path, tgt_path)
    return CTranslate2Translator(target, tokenizer, device, threads, workers, config=cfg)
