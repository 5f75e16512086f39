"""Greedy and batched beam search, written once against the `Seq2SeqModel` step interface.

Both searches decode a padded source batch (batch, src_len) and return, in input order, a list of
hypotheses per sentence (best first). Finished sentences leave the batch: their rows are dropped from
the decoder state with `model.reorder_state`, so later steps only compute on live sentences. Beam search
is the `BeamSearch` class, which new sentences may also join while it runs (`model.merge_states`; each
sentence counts its own steps): a server keeps its batch full that way (continuous batching).

Maximum length: a hypothesis has at most floor(a * src_len + b) target tokens (</s> not counted), with
src_len the number of non-pad source tokens. A hypothesis that reaches it is forced to end: </s> is
appended and its log-probability counted, so `log_prob` is always the model's log-probability of
`tokens + [</s>]`.

Length penalty (`LENGTH_PENALTIES`, chosen by `SearchConfig.length_penalty_kind`, alpha =
`SearchConfig.length_penalty`): a finished hypothesis is ranked by score = log_prob / lp(len), where
len counts its tokens including </s>:
    gnmt  lp = ((5 + len) / 6) ** alpha     (Wu et al. 2016; alpha = 0 gives the raw sum of log-probs)
    avg   lp = len ** alpha                 (alpha = 1: average log-prob per token)
    none  lp = 1
Greedy search does not normalise: its score is its log_prob.

Early stopping (beam search), `SearchConfig.stop`: a sentence is done when it has `beam` finished
hypotheses and the best live beam is judged unable to beat the worst of them. Log-probs only decrease as
tokens are added, so a live beam with log-prob s (<= 0) can at best reach s / lp(L) for a final length L in
[current + 1, max + 1].
    heuristic  (default) the bound is s / lp(current + 1): the live beam's score if it ended now, as in
               Hugging Face's and CTranslate2's beam search. A growing length penalty could still lift a long
               hypothesis above it, but a model rarely keeps its log-prob that high; decoding stops far earlier.
    exact      the bound is s / max(lp(current + 1), lp(max + 1)), as lp is monotone in L: the search never stops
               on a hypothesis it could still improve on. With a length penalty (alpha > 0) most sentences then
               run to their maximum length; with alpha = 0 both rules are the same.
A sentence is also done when it reaches its maximum length (every live beam is then finalised with </s>) or
when no live beam is left.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from seqtool.config import (
    LENGTH_PENALTY_KIND,
    NBEST,
    SAMPLE_SEED,
    SAMPLE_TEMPERATURE,
    SAMPLE_TOP_K,
    SAMPLE_TOP_P,
    DecodeConfig,
)
from seqtool.errors import ConfigError, check
from seqtool.models.base import DecoderState, Seq2SeqModel

__all__ = [
    "LENGTH_PENALTIES",
    "STOP_RULES",
    "BeamSearch",
    "Hypothesis",
    "SearchConfig",
    "beam_search",
    "greedy_search",
    "max_lengths",
    "score_sequence",
    "search",
]


@dataclass
class Hypothesis:
    """One output sequence of the search."""

    tokens: list[int]  # target ids without bos/eos
    score: float  # the score used for ranking (length-normalised when a length penalty is used)
    log_prob: float  # sum of token log-probabilities, </s> included


_DECODE = DecodeConfig()  # the defaults live in config.py only


@dataclass
class SearchConfig:
    """Decoding options (the `decode` section of the config, plus the n-best size); defaults from `DecodeConfig`."""

    beam: int = _DECODE.beam
    nbest: int = NBEST
    length_penalty: float = _DECODE.length_penalty  # alpha; 0 = raw sum of log-probs
    max_len_a: float = _DECODE.max_len_a  # max target length = a * src_len + b (src_len counts real source tokens)
    max_len_b: int = _DECODE.max_len_b
    length_penalty_kind: str = LENGTH_PENALTY_KIND  # a key of LENGTH_PENALTIES
    stop: str = _DECODE.stop  # early stopping of beam search: "heuristic" or "exact" (see the module docstring)
    sample: bool = False  # sample instead of searching: `nbest` independent samples per sentence (see sampling.py)
    top_k: int = SAMPLE_TOP_K  # sampling: only from the k likeliest tokens; 0 = all
    top_p: float = SAMPLE_TOP_P  # sampling: only from the smallest set of tokens whose probability reaches p
    temperature: float = SAMPLE_TEMPERATURE  # sampling: logits / temperature; 0 = the likeliest token (greedy)
    seed: int = SAMPLE_SEED  # sampling: with the line number, the seed of each sentence's random draws
    tgt_lang: str = ""  # a multilingual model's target language; its tag goes where data.tag_side says (languages.py)

    @property
    def rows_per_sentence(self) -> int:
        """Decoder rows a sentence takes: its beam, or its samples when sampling (for token budgets)."""
        return self.nbest if self.sample else self.beam

    @property
    def greedy_like(self) -> bool:
        """Whether the search extends one hypothesis per row at a time (greedy search and sampling)."""
        return self.sample or (self.beam == 1 and self.nbest == 1)

    @classmethod
    def from_decode(cls, decode: DecodeConfig, **overrides: Any) -> SearchConfig:
        """The search of a config's `decode` section, with `overrides` (search fields; a None value is ignored).

        The beam is widened to the n-best size when that is larger (beam = max(beam, nbest)).
        """
        values: dict[str, Any] = {
            "beam": decode.beam,
            "length_penalty": decode.length_penalty,
            "max_len_a": decode.max_len_a,
            "max_len_b": decode.max_len_b,
            "stop": decode.stop,
        }
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"SearchConfig has no field(s) {', '.join(sorted(unknown))}")  # a programming error
        values.update({key: value for key, value in overrides.items() if value is not None})
        if not values.get("sample"):
            values["beam"] = max(values["beam"], values.get("nbest", NBEST))
        return cls(**values)


def _lp_gnmt(length: Tensor, alpha: float) -> Tensor:
    return ((5.0 + length) / 6.0) ** alpha


def _lp_avg(length: Tensor, alpha: float) -> Tensor:
    return length**alpha


def _lp_none(length: Tensor, alpha: float) -> Tensor:
    return torch.ones_like(length)


# length (tokens including </s>, float tensor), alpha -> divisor of the summed log-prob
LENGTH_PENALTIES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "gnmt": _lp_gnmt,
    "avg": _lp_avg,
    "none": _lp_none,
}
STOP_RULES = ("heuristic", "exact")  # see "Early stopping" above


def max_lengths(src: Tensor, pad: int, a: float, b: float) -> Tensor:
    """Per-sentence maximum number of target tokens (</s> excluded): floor(a * src_len + b), at least 0."""
    src_len = (src != pad).sum(1).double()
    return torch.floor(a * src_len + b).long().clamp_min(0)


def _banned(model: Seq2SeqModel, device: torch.device) -> Tensor:
    return torch.tensor([model.specials.pad, model.specials.bos], device=device)


def _next_log_probs(
    model: Seq2SeqModel, tokens: Tensor, state: DecoderState, banned: Tensor
) -> tuple[Tensor, DecoderState]:
    """One decoder step: float32 log-probs (rows, vocab) with pad and bos made impossible."""
    logits, state = model.step(tokens, state)
    lprobs = logits.float().log_softmax(-1)
    return lprobs.index_fill_(1, banned, -math.inf), state


def force_prefix(lprobs: Tensor, prefix: Tensor, steps: Tensor | int) -> Tensor:
    """`lprobs` (rows, vocab) where rows still inside their target prefix keep only the prefix's next token.

    `prefix` (rows, longest) holds each row's forced target ids, padded with -1 after its end; `steps` is each row's
    (or every row's) number of tokens so far. The kept token keeps its log-probability, so scores stay the model's.
    """
    if isinstance(steps, int):
        if steps >= prefix.size(1):
            return lprobs
        wanted = prefix[:, steps]
    else:
        wanted = prefix.gather(1, steps.clamp(max=prefix.size(1) - 1).unsqueeze(1)).squeeze(1)
        wanted = wanted.masked_fill(steps >= prefix.size(1), -1)
    active = (wanted >= 0).unsqueeze(1)
    index = wanted.clamp_min(0).unsqueeze(1)
    forced = torch.full_like(lprobs, -math.inf).scatter_(1, index, lprobs.gather(1, index))
    return torch.where(active, forced, lprobs)


def prefix_lengths(prefix: Tensor | None, max_len: Tensor) -> Tensor:
    """Maximum lengths raised to at least each sentence's prefix length (a prefix is never cut)."""
    if prefix is None:
        return max_len
    return torch.maximum(max_len, (prefix >= 0).sum(1))


@torch.inference_mode()
def greedy_search(
    model: Seq2SeqModel, src: Tensor, max_len_a: float, max_len_b: int, prefix: Tensor | None = None
) -> list[list[Hypothesis]]:
    """Batched greedy decoding: one hypothesis per sentence, in input order, with score = log_prob.

    `prefix` (batch, longest), -1 after each end: target ids each output must start with (see `force_prefix`).
    """
    sp = model.specials
    batch, device = src.size(0), src.device
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]
    if batch == 0:
        return results
    max_len = prefix_lengths(prefix, max_lengths(src, sp.pad, max_len_a, max_len_b))
    state = model.init_state(model.encode(src))
    banned = _banned(model, device)
    tokens = src.new_full((batch, int(max_len.max())), sp.pad)  # (n, max target length)
    log_prob = torch.zeros(batch, device=device)
    sent = torch.arange(batch, device=device)  # input position of each live row
    prev = src.new_full((batch,), sp.bos)
    t = 0
    while True:
        lprobs, state = _next_log_probs(model, prev, state, banned)
        if prefix is not None:
            lprobs = force_prefix(lprobs, prefix, t)
        tok = lprobs.argmax(-1).masked_fill_(max_len == t, sp.eos)
        log_prob = log_prob + lprobs.gather(1, tok.unsqueeze(1)).squeeze(1)
        done = tok == sp.eos
        n_done = int(done.sum())  # the one host sync per step
        if n_done:
            for i, toks, lp in zip(
                sent[done].tolist(), tokens[done, :t].tolist(), log_prob[done].tolist(), strict=True
            ):
                results[i] = [Hypothesis(tokens=toks, score=lp, log_prob=lp)]
            if n_done == done.numel():
                return results
            keep = (~done).nonzero().squeeze(1)
            state = model.reorder_state(state, keep)
            tokens, log_prob, sent, max_len, tok = tokens[keep], log_prob[keep], sent[keep], max_len[keep], tok[keep]
            prefix = None if prefix is None else prefix[keep]
        tokens[:, t] = tok
        prev = tok
        t += 1


def check_beam_config(cfg: SearchConfig) -> None:
    """A ConfigError for a beam search that cannot run: beam < 1, nbest outside 1..beam, unknown penalty or rule."""
    k = cfg.beam
    check(k >= 1, f"beam must be >= 1, got {k}", kind=ConfigError)
    check(1 <= cfg.nbest <= k, f"nbest must be between 1 and beam ({k}), got {cfg.nbest}", kind=ConfigError)
    check(
        cfg.length_penalty_kind in LENGTH_PENALTIES,
        f"unknown length penalty {cfg.length_penalty_kind!r}",
        hint=f"choose one of {', '.join(LENGTH_PENALTIES)}",
        kind=ConfigError,
    )
    check(
        cfg.stop in STOP_RULES,
        f"unknown stopping rule {cfg.stop!r}",
        hint=f"choose one of {', '.join(STOP_RULES)}",
        kind=ConfigError,
    )


class BeamSearch:
    """A batched beam search over sentences × beam rows that new sentences may join while it runs.

    `admit` encodes sources and adds them to the live batch (each sentence counts its own steps, so sentences that
    joined at different times search side by side: continuous batching, as a server wants); `step` extends every
    live sentence by one token and returns the sentences that are done, with their `cfg.nbest` hypotheses (best
    first). `beam_search` is this class with one admission. Call under `torch.inference_mode()` (and the autocast
    of the run), from one thread.
    """

    def __init__(self, model: Seq2SeqModel, cfg: SearchConfig, device: torch.device) -> None:
        check_beam_config(cfg)
        self.model, self.cfg, self.device = model, cfg, device
        self.k = cfg.beam
        self.keys: list[Any] = []  # the caller's key of each live sentence, in row order
        self._banned = _banned(model, device)
        self._beams = torch.arange(self.k, device=device)
        self._lp_table = torch.empty(0, device=device)
        self._state: DecoderState | None = None
        self._live: dict[str, Tensor] = {}

    @property
    def live(self) -> int:
        """Sentences being searched."""
        return len(self.keys)

    def rows(self) -> int:
        """Decoder rows (live sentences × beam)."""
        return self.live * self.k

    def admit(self, src: Tensor, keys: Sequence[Any], prefix: Tensor | None = None) -> None:
        """Add the sentences of a padded source batch (batch, src_len), each with its key, to the search; `prefix`
        (batch, longest), -1 after each end: target ids their outputs must start with (see `force_prefix`)."""
        batch, k, sp = src.size(0), self.k, self.model.specials
        if batch == 0:
            return
        neg_inf = -math.inf
        if prefix is None:
            prefix = src.new_full((batch, 0), -1)
        max_len = prefix_lengths(prefix, max_lengths(src, sp.pad, self.cfg.max_len_a, self.cfg.max_len_b))
        width = int(max_len.max())
        self._grow_lp_table(width)
        # the largest penalty a live hypothesis may still reach: at its maximum length (exact) or when it ends now
        lp_at_max = self._lp_table[max_len + 1] if self.cfg.stop == "exact" else torch.zeros(batch, device=self.device)
        state = self.model.init_state(self.model.encode(src))
        state = self.model.expand_state(state, torch.arange(batch, device=self.device), k)
        # live beams: (n, k) summed log-probs; at the start only beam 0 is live, so beams do not duplicate
        log_prob = torch.full((batch, k), neg_inf, device=self.device)
        log_prob[:, 0] = 0.0
        # finished hypotheses, sorted best first; key = score, -inf for an empty slot (lowest for a legal
        # hypothesis of probability 0, only possible when the model forbids </s> and the max length forces it)
        new = {
            "log_prob": log_prob,
            "tokens": src.new_full((batch, k, width), sp.pad),
            "fin_key": torch.full((batch, k), neg_inf, device=self.device),
            "fin_log_prob": torch.full((batch, k), neg_inf, device=self.device),
            "fin_tokens": src.new_full((batch, k, width), sp.pad),
            "max_len": max_len,
            "steps": torch.zeros(batch, dtype=torch.long, device=self.device),  # tokens in each live hypothesis
            "prev": src.new_full((batch * k,), sp.bos),
            "prefix": prefix,
            "lp_at_max": lp_at_max,
        }
        if self._state is None:
            self._state, self._live = state, new
        else:
            self._state = self.model.merge_states(self._state, state)
            pads = {"tokens": sp.pad, "fin_tokens": sp.pad, "prefix": -1}
            self._live = {key: _cat_padded(self._live[key], new[key], pads.get(key, 0)) for key in new}
        self.keys.extend(keys)

    def _grow_lp_table(self, width: int) -> None:
        """lp_table[L] = the penalty of a hypothesis of L tokens including </s>, for L up to width + 2."""
        if self._lp_table.numel() < width + 3:
            lengths = torch.arange(width + 3, device=self.device, dtype=torch.float32)
            self._lp_table = LENGTH_PENALTIES[self.cfg.length_penalty_kind](lengths, self.cfg.length_penalty)

    def step(self) -> list[tuple[Any, list[Hypothesis]]]:
        """One token more for every live sentence; the (key, hypotheses) of the sentences that are now done."""
        if self._state is None:
            return []
        k, sp, cfg, live = self.k, self.model.specials, self.cfg, self._live
        neg_inf, lowest = -math.inf, torch.finfo(torch.float32).min
        log_prob, tokens, steps, max_len = live["log_prob"], live["tokens"], live["steps"], live["max_len"]
        n, width, lp_table, lp_at_max = log_prob.size(0), tokens.size(2), self._lp_table, live["lp_at_max"]

        lprobs, state = _next_log_probs(self.model, live["prev"], self._state, self._banned)
        prefix = live["prefix"]
        if prefix.size(1):  # sentences inside their prefix: one candidate per beam (only beam 0 is live there)
            lprobs = force_prefix(lprobs, prefix.repeat_interleave(k, 0), steps.repeat_interleave(k))
        vocab = lprobs.size(-1)
        cand = log_prob.unsqueeze(-1) + lprobs.view(n, k, vocab)  # (n, k, vocab)
        # 2k candidates: at most k of them end with </s> (one per beam), so k others remain to continue
        top_val, top_idx = cand.view(n, k * vocab).topk(min(2 * k, k * vocab), dim=1)
        top_beam, top_tok = top_idx // vocab, top_idx % vocab

        # new finished hypotheses: </s> among the k best candidates, or every live beam at the max length
        forced = (max_len == steps).unsqueeze(1)  # (n, 1)
        eos_val = torch.where(forced, cand[:, :, sp.eos], top_val[:, :k])
        eos_beam = torch.where(forced, self._beams, top_beam[:, :k])
        eos_ok = torch.where(forced, log_prob > neg_inf, (top_tok[:, :k] == sp.eos) & (top_val[:, :k] > neg_inf))
        eos_key = (eos_val / lp_table[steps + 1].unsqueeze(1)).nan_to_num_(neginf=lowest)
        eos_key = eos_key.masked_fill_(~eos_ok, neg_inf)
        eos_tokens = tokens.gather(1, eos_beam.unsqueeze(-1).expand(-1, -1, width))
        fin_key, pick = torch.cat([live["fin_key"], eos_key], 1).topk(k, dim=1)
        fin_log_prob = torch.cat([live["fin_log_prob"], eos_val], 1).gather(1, pick)
        fin_tokens = torch.cat([live["fin_tokens"], eos_tokens], 1).gather(1, pick.unsqueeze(-1).expand(-1, -1, width))

        # live beams for the next step: the k best candidates not ending with </s>
        log_prob, pick = top_val.masked_fill(top_tok == sp.eos, neg_inf).topk(k, dim=1)
        beam, tok = top_beam.gather(1, pick), top_tok.gather(1, pick)

        bound = log_prob[:, 0] / torch.maximum(lp_table[steps + 2], lp_at_max)
        done = forced.squeeze(1) | (log_prob[:, 0] == neg_inf) | (bound <= fin_key[:, k - 1])
        n_done = int(done.sum())  # the one host sync per step
        finished: list[tuple[Any, list[Hypothesis]]] = []
        if n_done:
            done_rows = done.nonzero().squeeze(1).tolist()
            found = _collect(fin_key[done], fin_log_prob[done], fin_tokens[done], lp_table, sp.pad, cfg.nbest)
            finished = [(self.keys[i], hyps) for i, hyps in zip(done_rows, found, strict=True)]
            if n_done == n:
                self._state, self._live, self.keys = None, {}, []
                return finished
            keep = ~done
            gone = set(done_rows)
            self.keys = [key for i, key in enumerate(self.keys) if i not in gone]
            steps, max_len = steps[keep], max_len[keep]
            fin_key, fin_log_prob, fin_tokens = fin_key[keep], fin_log_prob[keep], fin_tokens[keep]
            log_prob, beam, tok, tokens = log_prob[keep], beam[keep], tok[keep], tokens[keep]
            prefix, lp_at_max = prefix[keep], lp_at_max[keep]
            rows = (keep.nonzero() * k + beam).view(-1)
        else:
            rows = (torch.arange(n, device=self.device).unsqueeze(1) * k + beam).view(-1)
        self._state = self.model.reorder_state(state, rows)
        tokens = tokens.gather(1, beam.unsqueeze(-1).expand(-1, -1, width))
        tokens.scatter_(2, steps.view(-1, 1, 1).expand(-1, k, 1), tok.unsqueeze(-1))
        self._live = {
            "log_prob": log_prob,
            "tokens": tokens,
            "fin_key": fin_key,
            "fin_log_prob": fin_log_prob,
            "fin_tokens": fin_tokens,
            "max_len": max_len,
            "steps": steps + 1,
            "prev": tok.view(-1),
            "prefix": prefix,
            "lp_at_max": lp_at_max,
        }
        return finished


def _cat_padded(first: Tensor, second: Tensor, pad: int) -> Tensor:
    """Row-wise concatenation; buffers of different widths (their last dim: tokens, prefixes) are padded first."""
    if first.dim() > 1 and first.size(-1) != second.size(-1):
        width = max(first.size(-1), second.size(-1))
        first, second = (
            torch.cat([t, t.new_full((*t.shape[:-1], width - t.size(-1)), pad)], -1) for t in (first, second)
        )
    return torch.cat([first, second])


@torch.inference_mode()
def beam_search(
    model: Seq2SeqModel, src: Tensor, cfg: SearchConfig, prefix: Tensor | None = None
) -> list[list[Hypothesis]]:
    """Batched beam search over batch x beam rows: `cfg.nbest` hypotheses per sentence, best first, in input order
    (`prefix`: see `BeamSearch.admit`)."""
    searcher = BeamSearch(model, cfg, src.device)
    results: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    searcher.admit(src, range(src.size(0)), prefix)
    while searcher.live:
        for i, hyps in searcher.step():
            results[i] = hyps
    return results


def _collect(
    key: Tensor, log_prob: Tensor, tokens: Tensor, lp_table: Tensor, pad: int, nbest: int
) -> list[list[Hypothesis]]:
    """The finished buffers of the sentences that are done, as Hypothesis lists (best first)."""
    key, log_prob, tokens = key[:, :nbest], log_prob[:, :nbest], tokens[:, :nbest]
    lengths = (tokens != pad).sum(-1)  # pad is never emitted, so it only fills the tail
    score = log_prob / lp_table[lengths + 1]
    rows = zip(key.tolist(), score.tolist(), log_prob.tolist(), tokens.tolist(), lengths.tolist(), strict=True)
    return [
        [
            Hypothesis(tokens=toks[j][: lens[j]], score=scores[j], log_prob=log_probs[j])
            for j in range(nbest)
            if keys[j] > -math.inf
        ]
        for keys, scores, log_probs, toks, lens in rows
    ]


def search(
    model: Seq2SeqModel,
    src: Tensor,
    cfg: SearchConfig,
    lines: Sequence[int] | None = None,
    prefix: Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Sampling with `cfg.sample`, else greedy search when beam == nbest == 1, else beam search; `cfg.nbest`
    hypotheses per sentence, in input order. `lines`: each sentence's line number, which seeds its samples (default:
    its row); `prefix` (batch, longest), -1 after each end: target ids each output starts with."""
    if cfg.sample:
        from seqtool.decode.sampling import sample_search

        return sample_search(model, src, cfg, range(src.size(0)) if lines is None else lines, prefix)
    if cfg.beam == 1 and cfg.nbest == 1:
        return greedy_search(model, src, cfg.max_len_a, cfg.max_len_b, prefix)
    return beam_search(model, src, cfg, prefix)


@torch.inference_mode()
def score_sequence(model: Seq2SeqModel, src: Tensor, tgt: Tensor) -> Tensor:
    """Teacher-forced log-probability (batch,) of each target (ids without bos/eos, padded), </s> included."""
    sp = model.specials
    batch = tgt.size(0)
    lengths = (tgt != sp.pad).sum(1)
    pad_col = tgt.new_full((batch, 1), sp.pad)
    tgt_in = torch.cat([tgt.new_full((batch, 1), sp.bos), tgt], 1)
    tgt_out = torch.cat([tgt, pad_col], 1)
    tgt_out[torch.arange(batch, device=tgt.device), lengths] = sp.eos
    lprobs = model(src, tgt_in).float().log_softmax(-1)
    token_lp = lprobs.gather(2, tgt_out.unsqueeze(-1)).squeeze(-1)
    return token_lp.masked_fill(tgt_out == sp.pad, 0.0).sum(1)
