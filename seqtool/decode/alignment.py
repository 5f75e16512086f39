"""Word alignments from cross-attention, in Pharaoh format (`0-0 1-2 ...`: source word - target word).

Attention-based, as eole's `--report_align` and Marian's `--alignment hard`: the translation is fed back to the model
(teacher forcing) and each target piece is linked to the source piece its cross-attention weighs most (Transformer:
the last decoder layer, heads averaged; RNN models: their one attention), </s> left out on both sides. Pieces are
mapped to words (a piece starting with "▁" starts a word) and each word pair is listed once, sorted. Attention is not
a trained aligner: it is good where the model attends where it translates, and can be off by a word elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from seqtool.data.batching import pad_sequences
from seqtool.decode.translate import length_batches
from seqtool.errors import ConfigError
from seqtool.models.base import Seq2SeqModel
from seqtool.runtime import autocast
from seqtool.tokenizer import Tokenizer

WORD_START = "\u2581"  # SentencePiece's word-start mark


def word_index(pieces: Sequence[str]) -> list[int]:
    """The word each piece belongs to: a new word starts at every piece beginning with "▁" (and at the first)."""
    words, current = [], -1
    for i, piece in enumerate(pieces):
        if i == 0 or piece.startswith(WORD_START):
            current += 1
        words.append(current)
    return words


def piece_links(model: Seq2SeqModel, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], device: torch.device,
                precision: str = "fp32", batch_tokens: int = 4000) -> list[list[int]]:  # fmt: skip
    """For each pair, the source piece (index) each target piece attends to most; pairs with an empty side get []."""
    sp = model.specials
    links: list[list[int]] = [[] for _ in src]
    rows = [i for i in range(len(src)) if src[i] and tgt[i]]
    lengths = [max(len(src[i]), len(tgt[i])) for i in rows]
    with torch.inference_mode(), autocast(device, precision):
        for batch in length_batches(lengths, batch_tokens):
            picked = [rows[j] for j in batch]
            src_t = pad_sequences([src[i] for i in picked], sp.pad, suffix=sp.eos).to(device)
            tgt_in = pad_sequences([tgt[i] for i in picked], sp.pad, prefix=sp.bos).to(device)
            weights = model.attention_weights(src_t, tgt_in)
            if weights is None:
                raise ConfigError(
                    "--align needs a model with attention", "this model has attention: none (its context vector only)"
                )
            for row, i in enumerate(picked):
                # output piece t is predicted at input position t; the source's </s> (last real column) is left out
                block = weights[row, : len(tgt[i]), : len(src[i])].float()
                links[i] = block.argmax(-1).tolist()
    return links


def pharaoh(src_pieces: Sequence[str], tgt_pieces: Sequence[str], links: Sequence[int]) -> str:
    """`i-j` word pairs (source word i, target word j), each once, sorted by target then source word."""
    src_words, tgt_words = word_index(src_pieces), word_index(tgt_pieces)
    pairs = sorted(
        {(src_words[s], tgt_words[t]) for t, s in enumerate(links) if s >= 0}, key=lambda pair: (pair[1], pair[0])
    )
    return " ".join(f"{i}-{j}" for i, j in pairs)


def align_translations(
    model: Seq2SeqModel,
    tokenizer: Tokenizer,
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    device: torch.device,
    precision: str = "fp32",
    src_tagged: bool = False,
    tgt_tagged: bool = False,
) -> list[str]:
    """The Pharaoh alignment of each (source ids, target ids) pair ("" where a side is empty). A language tag is no
    word: `src_tagged`, each source starts with one (target pieces attending to it get no link); `tgt_tagged`, each
    target does (it gets no link)."""
    links = piece_links(model, src_ids, tgt_ids, device, precision)
    if src_tagged:
        src_ids = [ids[1:] for ids in src_ids]
        links = [[s - 1 for s in link] for link in links]
    if tgt_tagged:
        tgt_ids = [ids[1:] for ids in tgt_ids]
        links = [link[1:] for link in links]
    src_pieces = [[tokenizer.src.processor.id_to_piece(i) for i in ids] for ids in src_ids]
    tgt_pieces = [[tokenizer.tgt.processor.id_to_piece(i) for i in ids] for ids in tgt_ids]
    return [pharaoh(s, t, link) for s, t, link in zip(src_pieces, tgt_pieces, links, strict=True)]
