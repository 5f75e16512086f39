"""Sampling translations (back-translation, diverse outputs): `nbest` independent samples per sentence.

Each step draws the next token from the model's distribution, changed as asked and in this order (as Hugging Face
and fairseq do): logits / `temperature` (0: the likeliest token, i.e. greedy search), then only the `top_k` likeliest
tokens (0: all), then only the smallest set of the likeliest tokens whose probability reaches `top_p` (nucleus
sampling; 1.0: all). A sample ends with </s> or is cut at the maximum length, as in greedy search.

Reproducible and independent of batching: a draw is the Gumbel-max trick, argmax(logits + Gumbel noise), with the
noise of each token a hash of (seed, line number, sample number, step, token). The same line, seed and options give
the same samples alone or in any batch, on any number of workers; different lines and samples are independent.

A sample's `log_prob` and `score` are its log-probability under the model itself (temperature 1, no truncation),
the units of `translate --scores` and `seqtool score`; samples are listed in the order drawn, not ranked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from seqtool.decode.search import Hypothesis, SearchConfig, max_lengths
from seqtool.errors import ConfigError, check
from seqtool.models.base import Seq2SeqModel

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def check_sampling_config(cfg: SearchConfig) -> None:
    """A ConfigError for sampling options out of range."""
    check(cfg.nbest >= 1, f"nbest (samples per line) must be >= 1, got {cfg.nbest}", kind=ConfigError)
    check(cfg.top_k >= 0, f"top_k must be >= 0 (0 = all tokens), got {cfg.top_k}", kind=ConfigError)
    check(0.0 < cfg.top_p <= 1.0, f"top_p must be in (0, 1], got {cfg.top_p}", kind=ConfigError)
    check(cfg.temperature >= 0.0, f"temperature must be >= 0 (0 = greedy), got {cfg.temperature}", kind=ConfigError)


def _mix32(h: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding 32-bit values (bijective, good avalanche)."""
    h = h & _MASK32
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def uniform_noise(seed: int, lines: Tensor, samples: Tensor, step: int, tokens: Tensor | int) -> Tensor:
    """Uniform numbers in (0, 1), float64: a hash of (seed, line, sample, step, token) each, for `tokens` (rows, m)
    token ids, or every id of a vocabulary of that size (an int) -> (rows, vocab)."""
    key = _mix32(torch.full_like(lines, seed & _MASK32) + _GOLDEN)
    for part in (lines, samples, torch.full_like(lines, step)):
        key = _mix32(key ^ _mix32(part + _GOLDEN))
    if isinstance(tokens, int):
        tokens = torch.arange(tokens, device=lines.device)[None, :]
    return (_mix32(key[:, None] ^ _mix32(tokens * _GOLDEN)).double() + 0.5) / 2.0**32


def sampling_logits(lprobs: Tensor, cfg: SearchConfig) -> Tensor:
    """The log-weights (rows, vocab) tokens are drawn from: tempered, then cut to top-k and top-p (-inf outside)."""
    logits = lprobs / cfg.temperature
    if 0 < cfg.top_k < logits.size(-1):
        kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability of the likelier tokens
        drop_sorted = before >= cfg.top_p  # the likeliest token is always kept (before = 0)
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -math.inf)
    return logits


def draw(lprobs: Tensor, cfg: SearchConfig, lines: Tensor, samples: Tensor, step: int) -> Tensor:
    """The next token of each row (rows,), drawn from `lprobs` (rows, vocab) as `cfg` says (`sampling_logits`).

    With top-k, only the k candidates are tempered and get noise (the others cannot win): the same draw, cheaper.
    """
    if cfg.temperature == 0.0:
        return lprobs.argmax(-1)
    if 0 < cfg.top_k < lprobs.size(-1):
        values, candidates = lprobs.topk(cfg.top_k, dim=-1)  # sorted, likeliest first
        logits = _nucleus(values.double() / cfg.temperature, cfg.top_p)
    else:
        logits = sampling_logits(lprobs.double(), cfg)
        candidates = torch.arange(logits.size(-1), device=logits.device).expand_as(logits)
    gumbel = -torch.log(-torch.log(uniform_noise(cfg.seed, lines, samples, step, candidates)))
    return candidates.gather(1, (logits + gumbel).argmax(-1, keepdim=True)).squeeze(1)


def _nucleus(sorted_logits: Tensor, top_p: float) -> Tensor:
    """Logits sorted likeliest first, -inf after the smallest prefix whose probability reaches `top_p`."""
    if top_p >= 1.0:
        return sorted_logits
    probs = sorted_logits.softmax(-1)
    return sorted_logits.masked_fill(probs.cumsum(-1) - probs >= top_p, -math.inf)


@torch.inference_mode()
def sample_search(
    model: Seq2SeqModel, src: Tensor, cfg: SearchConfig, lines: Sequence[int], prefix: Tensor | None = None
) -> list[list[Hypothesis]]:
    """`cfg.nbest` samples per sentence of `src` (batch, src_len), in input order; `lines` seed each sentence;
    `prefix` (batch, longest), -1 after each end: target ids each sample starts with."""
    from seqtool.decode.search import _banned, _next_log_probs, force_prefix, prefix_lengths

    check_sampling_config(cfg)
    sp, n = model.specials, cfg.nbest
    batch, device = src.size(0), src.device
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]
    if batch == 0:
        return results
    rows = torch.arange(batch, device=device).repeat_interleave(n)  # sentence of each row
    sent = rows.clone()
    line_ids = torch.as_tensor(list(lines), dtype=torch.long, device=device)[rows]
    sample_ids = torch.arange(n, device=device).repeat(batch)
    max_len = prefix_lengths(prefix, max_lengths(src, sp.pad, cfg.max_len_a, cfg.max_len_b))[rows]
    prefix = None if prefix is None else prefix[rows]
    state = model.reorder_state(model.init_state(model.encode(src)), rows)  # rows are independent: no beam groups
    banned = _banned(model, device)
    tokens = src.new_full((rows.numel(), int(max_len.max())), sp.pad)
    log_prob = torch.zeros(rows.numel(), device=device)
    prev = src.new_full((rows.numel(),), sp.bos)
    found: list[list[tuple[int, Hypothesis]]] = [[] for _ in range(batch)]
    t = 0
    while True:
        lprobs, state = _next_log_probs(model, prev, state, banned)
        if prefix is not None:
            lprobs = force_prefix(lprobs, prefix, t)
        tok = draw(lprobs, cfg, line_ids, sample_ids, t).masked_fill_(max_len == t, sp.eos)
        log_prob = log_prob + lprobs.gather(1, tok.unsqueeze(1)).squeeze(1)
        done = tok == sp.eos
        n_done = int(done.sum())  # the one host sync per step
        if n_done:
            finished = zip(
                sent[done].tolist(),
                sample_ids[done].tolist(),
                tokens[done, :t].tolist(),
                log_prob[done].tolist(),
                strict=True,
            )
            for i, j, toks, lp in finished:
                found[i].append((j, Hypothesis(tokens=toks, score=lp, log_prob=lp)))
            if n_done == done.numel():
                break
            keep = (~done).nonzero().squeeze(1)
            state = model.reorder_state(state, keep)
            tokens, log_prob, max_len, tok = tokens[keep], log_prob[keep], max_len[keep], tok[keep]
            sent, line_ids, sample_ids = sent[keep], line_ids[keep], sample_ids[keep]
            prefix = None if prefix is None else prefix[keep]
        tokens[:, t] = tok
        prev = tok
        t += 1
    for i, drawn in enumerate(found):
        results[i] = [hyp for _, hyp in sorted(drawn, key=lambda pair: pair[0])]
    return results
