"""The Transformer encoder–decoder (Vaswani et al., 2017) with pre- or post-norm and a key/value cache for decoding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seqtool.config import TransformerConfig
from seqtool.models.attention import MultiHeadAttention
from seqtool.models.base import DecoderState, EncoderOutput, Seq2SeqModel, select_rows
from seqtool.models.dropout import Dropout
from seqtool.tokenizer import SpecialIds

_DEFAULTS = TransformerConfig()  # the defaults live in config.py only

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}

KVPair = tuple[Tensor, Tensor]


def sinusoidal_positions(length: int, dim: int, start: int = 0) -> Tensor:
    """Sinusoidal position encodings (length, dim) for positions start .. start+length-1 (sin on even, cos on odd)."""
    return sinusoidal_at(torch.arange(start, start + length), dim)


def sinusoidal_at(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal position encodings (len(positions), dim) of the given positions (a 1-d integer tensor)."""
    length = positions.numel()
    position = positions.to(torch.float32).cpu()[:, None]  # (length, 1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (ceil(dim/2),)
    angles = position * frequency  # (length, ceil(dim/2))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


def _feed_forward(d_model: int, ffn_dim: int, activation: str) -> nn.Sequential:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    return nn.Sequential(nn.Linear(d_model, ffn_dim), ACTIVATIONS[activation](), nn.Linear(ffn_dim, d_model))


class _ResidualLayer(nn.Module):
    """Residual sub-layer wiring: pre-norm `x + f(LN(x))` or post-norm `LN(x + f(x))`, dropout on f's output."""

    def __init__(self, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def _sublayer_input(self, x: Tensor, norm: nn.LayerNorm) -> Tensor:
        return norm(x) if self.pre_norm else x

    def _sublayer_output(self, x: Tensor, y: Tensor, norm: nn.LayerNorm) -> Tensor:
        return x + self.dropout(y) if self.pre_norm else norm(x + self.dropout(y))


class EncoderLayer(_ResidualLayer):
    """Self-attention then feed-forward: Z = MHA(X) + X, H = FFN(Z) + Z (plus layer norms)."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        ffn_dim: int,
        dropout: float,
        attention_dropout: float,
        activation: str,
        pre_norm: bool,
    ) -> None:
        super().__init__(dropout, pre_norm)
        self.self_attn = MultiHeadAttention(d_model, heads, attention_dropout)
        self.ffn = _feed_forward(d_model, ffn_dim, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, src_mask: Tensor) -> Tensor:
        """x (batch, src_len, d_model), src_mask (batch, src_len) True = real -> (batch, src_len, d_model)."""
        h = self._sublayer_input(x, self.norm1)
        x = self._sublayer_output(x, self.self_attn(h, h, h, src_mask), self.norm1)
        return self._sublayer_output(x, self.ffn(self._sublayer_input(x, self.norm2)), self.norm2)


class DecoderLayer(_ResidualLayer):
    """Causal self-attention, cross-attention over the encoder output, feed-forward (each with residual + norm)."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        ffn_dim: int,
        dropout: float,
        attention_dropout: float,
        activation: str,
        pre_norm: bool,
    ) -> None:
        super().__init__(dropout, pre_norm)
        self.self_attn = MultiHeadAttention(d_model, heads, attention_dropout)
        self.cross_attn = MultiHeadAttention(d_model, heads, attention_dropout)
        self.ffn = _feed_forward(d_model, ffn_dim, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def _self_attention_block(
        self, x: Tensor, past: KVPair | None, past_mask: Tensor | None = None
    ) -> tuple[Tensor, KVPair]:
        """Causal self-attention; with `past` keys/values (incremental decoding) the new ones are appended.

        `past_mask` (batch, past_len + tgt_len) bool, True = a real slot: rows that joined a running search later than
        others have empty slots in front of their own keys (see `Transformer.merge_states`).
        """
        h = self._sublayer_input(x, self.norm1)
        q, k, v = self.self_attn.project_qkv(h)  # (batch, heads, tgt_len, head_dim)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # With a cache the new positions are the last ones, so the (bottom-right aligned) causal mask is still right.
        attended = self.self_attn.attend_projected(q, k, v, past_mask, causal=True)
        return self._sublayer_output(x, attended, self.norm1), (k, v)

    def forward(
        self,
        x: Tensor,
        memory_kv: KVPair,
        src_mask: Tensor,
        past: KVPair | None = None,
        group: int = 1,
        past_mask: Tensor | None = None,
    ) -> tuple[Tensor, KVPair]:
        """x (batch, tgt_len, d_model); memory_kv: cross-attention keys/values from `cross_attn.project_kv(memory)`.

        With `group` > 1 (beam search, tgt_len 1), rows come in groups of `group` beams of one sentence and
        memory_kv/src_mask hold one row per sentence: the beams attend as `group` queries of that sentence, so the
        encoder keys/values are neither copied per beam nor reordered when beams are.
        Returns the output (batch, tgt_len, d_model) and the self-attention keys/values (past ones included).
        """
        x, kv = self._self_attention_block(x, past, past_mask)
        h = self._sublayer_input(x, self.norm2)
        if group > 1:
            rows, length, d_model = h.shape
            h = h.reshape(rows // group, group * length, d_model)
        cross = self.cross_attn.attend(h, *memory_kv, src_mask).view_as(x)
        x = self._sublayer_output(x, cross, self.norm2)
        return self._sublayer_output(x, self.ffn(self._sublayer_input(x, self.norm3)), self.norm3), kv

    def cross_attention_weights(
        self, x: Tensor, memory: Tensor, src_mask: Tensor, average_heads: bool = True
    ) -> Tensor:
        """Cross-attention weights of this layer for input x: (batch, tgt_len, src_len) averaged over heads, or
        (batch, heads, tgt_len, src_len)."""
        x, _ = self._self_attention_block(x, None)
        query = self._sublayer_input(x, self.norm2)
        return self.cross_attn.weights(query, memory, src_mask, average_heads=average_heads)


class Transformer(Seq2SeqModel):
    """Transformer encoder–decoder with sinusoidal positions, optional shared/tied embeddings and a KV cache.

    Decoder state (tensors batch-first): `pos` (int, the next target position of every row, or a (rows,) tensor
    once rows that started at different steps were merged), `beam` (int, rows per sentence), `src_mask` (sentences,
    src_len), `self_mask` (None, or (rows, decoded_len) bool: False at the empty cache slots in front of a row that
    joined later), and `layers`: one dict per decoder layer with `self_k`/`self_v` (rows, heads, decoded_len,
    head_dim) and `cross_k`/`cross_v` (sentences, heads, src_len, head_dim). Rows = sentences × beam: the encoder
    side is kept once per sentence (see `expand_state` and `DecoderLayer.forward`'s `group`).
    """

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        specials: SpecialIds,
        d_model: int = _DEFAULTS.d_model,
        heads: int = _DEFAULTS.heads,
        ffn_dim: int = _DEFAULTS.ffn_dim,
        encoder_layers: int = _DEFAULTS.encoder_layers,
        decoder_layers: int = _DEFAULTS.decoder_layers,
        dropout: float = _DEFAULTS.dropout,
        attention_dropout: float = _DEFAULTS.attention_dropout,
        activation: str = _DEFAULTS.activation,
        pre_norm: bool = _DEFAULTS.pre_norm,
        share_embeddings: bool = _DEFAULTS.share_embeddings,
        tie_output: bool = _DEFAULTS.tie_output,
        max_positions: int = _DEFAULTS.max_positions,
    ) -> None:
        super().__init__()
        if share_embeddings and src_vocab != tgt_vocab:
            raise ValueError(
                f"share_embeddings needs equal source and target vocabularies (got {src_vocab} and {tgt_vocab})"
            )
        self.specials = specials
        self.d_model = d_model
        self.embed_scale = math.sqrt(d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model, padding_idx=specials.pad)
        self.src_embed = (
            self.tgt_embed if share_embeddings else nn.Embedding(src_vocab, d_model, padding_idx=specials.pad)
        )
        self.register_buffer("positions", sinusoidal_positions(max_positions, d_model), persistent=False)
        self.dropout = Dropout(dropout)
        layer_args = (d_model, heads, ffn_dim, dropout, attention_dropout, activation, pre_norm)
        self.encoder_layers = nn.ModuleList(EncoderLayer(*layer_args) for _ in range(encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(*layer_args) for _ in range(decoder_layers))
        # Pre-norm leaves the residual stream unnormalised, so each stack ends with a layer norm.
        self.encoder_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.output = nn.Linear(d_model, tgt_vocab)
        self._reset_parameters()
        if tie_output:
            self.output.weight = self.tgt_embed.weight

    def _reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for embed in dict.fromkeys((self.src_embed, self.tgt_embed)):  # ordered, shared counted once
            nn.init.normal_(embed.weight, mean=0.0, std=self.d_model**-0.5)
            with torch.no_grad():
                embed.weight[self.specials.pad].zero_()

    def _embed(self, tokens: Tensor, embed: nn.Embedding, start: int | Tensor = 0) -> Tensor:
        """Scaled embeddings plus positions start .. start+len-1: (batch, len) -> (batch, len, d_model).

        `start` may be a (batch,) tensor, one start per row (then len is 1: a decoder step).
        """
        if isinstance(start, Tensor):
            if int(start.max()) < self.positions.size(0):
                positions = self.positions.index_select(0, start)
            else:
                positions = sinusoidal_at(start, self.d_model).to(self.positions.device)
            return self.dropout(embed(tokens) * self.embed_scale + positions[:, None])
        end = start + tokens.size(1)
        if end <= self.positions.size(0):
            positions = self.positions[start:end]
        else:  # longer than max_positions: compute on the fly (the buffer keeps its size, so all DDP ranks agree)
            positions = sinusoidal_positions(end - start, self.d_model, start).to(self.positions.device)
        return self.dropout(embed(tokens) * self.embed_scale + positions)

    def encode(self, src: Tensor) -> EncoderOutput:
        """Encode a padded source batch (batch, src_len) into memory (batch, src_len, d_model)."""
        src_mask = src != self.specials.pad  # (batch, src_len)
        x = self._embed(src, self.src_embed)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return EncoderOutput(memory=self.encoder_norm(x), src_mask=src_mask)

    def features(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced decoder output (batch, tgt_len, d_model), final norm applied."""
        enc = self.encode(src)
        x = self._embed(tgt_in, self.tgt_embed)  # (batch, tgt_len, d_model)
        for layer in self.decoder_layers:
            x, _ = layer(x, layer.cross_attn.project_kv(enc.memory), enc.src_mask)
        return self.decoder_norm(x)

    def init_state(self, enc: EncoderOutput) -> DecoderState:
        """Cross-attention keys/values of every layer (computed once) and empty self-attention caches."""
        layers = []
        for layer in self.decoder_layers:
            cross_k, cross_v = layer.cross_attn.project_kv(enc.memory)  # (batch, heads, src_len, head_dim)
            empty = cross_k.new_zeros(cross_k.size(0), cross_k.size(1), 0, cross_k.size(3))
            layers.append({"self_k": empty, "self_v": empty, "cross_k": cross_k, "cross_v": cross_v})
        return {"pos": 0, "beam": 1, "src_mask": enc.src_mask, "self_mask": None, "layers": layers}

    _SENTENCE_KEYS = ("cross_k", "cross_v")

    def expand_state(self, state: DecoderState, rows: Tensor, beam: int) -> DecoderState:
        """Repeat the per-row caches `beam` times; the encoder side stays one row per sentence."""
        if state["beam"] != 1:
            raise ValueError("expand_state: the state is already expanded")
        per_row = rows.repeat_interleave(beam)  # one copy of each cache row per beam, in a single index_select
        layers = [
            {key: t.index_select(0, rows if key in self._SENTENCE_KEYS else per_row) for key, t in cache.items()}
            for cache in state["layers"]
        ]
        return {**state, "beam": beam, "src_mask": state["src_mask"].index_select(0, rows), "layers": layers}

    def reorder_state(self, state: DecoderState, index: Tensor) -> DecoderState:
        """Select rows (see `Seq2SeqModel.reorder_state`); with beams the encoder side is only touched when sentences
        leave the batch, and then by sentence."""
        beam = state["beam"]
        if beam == 1:
            return select_rows(state, index)
        old_rows = state["layers"][0]["self_k"].size(0) if state["layers"] else index.numel()
        # the contract: when the number of rows is kept, sentence i stays sentence i
        sentences = None if index.numel() == old_rows else index[::beam] // beam
        layers = []
        for cache in state["layers"]:
            layer = {}
            for key, t in cache.items():
                if key not in self._SENTENCE_KEYS:
                    layer[key] = t.index_select(0, index)
                else:
                    layer[key] = t if sentences is None else t.index_select(0, sentences)
            layers.append(layer)
        src_mask = state["src_mask"] if sentences is None else state["src_mask"].index_select(0, sentences)
        return {**state, **_select_row_tensors(state, index), "src_mask": src_mask, "layers": layers}

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """Feed tokens (batch,) at position state["pos"]; returns logits (batch, tgt_vocab) and the new state."""
        x = self._embed(tokens[:, None], self.tgt_embed, state["pos"])  # (batch, 1, d_model)
        self_mask = state.get("self_mask")
        if self_mask is not None:  # the new slot is real for every row
            self_mask = torch.cat([self_mask, self_mask.new_ones(self_mask.size(0), 1)], dim=1)
        new_layers = []
        for layer, cache in zip(self.decoder_layers, state["layers"], strict=True):
            x, (k, v) = layer(
                x,
                (cache["cross_k"], cache["cross_v"]),
                state["src_mask"],
                (cache["self_k"], cache["self_v"]),
                state["beam"],
                self_mask,
            )
            new_layers.append({**cache, "self_k": k, "self_v": v})
        logits = self.output(self.decoder_norm(x[:, 0]))
        return logits, {**state, "pos": state["pos"] + 1, "self_mask": self_mask, "layers": new_layers}

    def merge_states(self, first: DecoderState, second: DecoderState) -> DecoderState:
        """The rows of `first` then those of `second` (see `Seq2SeqModel.merge_states`).

        Rows may be at different steps: the shorter self-attention caches get empty, masked slots in front, and each
        row keeps its own position. Source sides of different lengths are padded (and masked) to the longer one.
        Slots that no row uses any more (its rows left) are dropped here, so caches do not grow without bound.
        """
        if first["beam"] != second["beam"]:
            raise ValueError(f"merge_states: beams differ ({first['beam']} and {second['beam']})")
        rows = [_rows(first), _rows(second)]
        decoded = max(_decoded(first), _decoded(second))
        src_len = max(first["src_mask"].size(1), second["src_mask"].size(1))
        self_mask = torch.cat([_self_mask(first, decoded), _self_mask(second, decoded)])
        src_mask = torch.cat([_pad_right(first["src_mask"], src_len, 1), _pad_right(second["src_mask"], src_len, 1)])
        # drop the leading cache slots and trailing source positions that no row uses
        used = self_mask.any(0).nonzero()
        skip = int(used[0]) if used.numel() else decoded
        src_used = src_mask.any(0).nonzero()
        src_keep = int(src_used[-1]) + 1 if src_used.numel() else src_len
        layers = []
        for a, b in zip(first["layers"], second["layers"], strict=True):
            layer = {}
            for key in a:
                if key in self._SENTENCE_KEYS:
                    both = [_pad_right(a[key], src_len, 2), _pad_right(b[key], src_len, 2)]
                    layer[key] = torch.cat(both)[:, :, :src_keep]
                else:
                    layer[key] = torch.cat([_pad_left(a[key], decoded, 2), _pad_left(b[key], decoded, 2)])[:, :, skip:]
            layers.append(layer)
        pos = torch.cat([_positions(state, n) for state, n in zip((first, second), rows, strict=True)])
        return {
            **first,
            "pos": pos,
            "src_mask": src_mask[:, :src_keep],
            "self_mask": self_mask[:, skip:],
            "layers": layers,
        }

    @torch.no_grad()
    def attention_weights(self, src: Tensor, tgt_in: Tensor, layer: int = -1, head: int | None = None) -> Tensor:
        """Cross-attention weights (batch, tgt_len, src_len) of decoder `layer` (default: the last), of one `head`
        or averaged over heads."""
        layers = list(self.decoder_layers)
        if not -len(layers) <= layer < len(layers):  # not wrapped around: layer 3 of 2 is a mistake, not layer 1
            raise ValueError(f"layer must be in {-len(layers)}..{len(layers) - 1}, got {layer}")
        index = layer % len(layers)
        if head is not None and not 0 <= head < layers[index].cross_attn.heads:
            raise ValueError(f"head must be in 0..{layers[index].cross_attn.heads - 1}, got {head}")
        enc = self.encode(src)
        x = self._embed(tgt_in, self.tgt_embed)
        for lower in layers[:index]:
            x, _ = lower(x, lower.cross_attn.project_kv(enc.memory), enc.src_mask)
        weights = layers[index].cross_attention_weights(x, enc.memory, enc.src_mask, average_heads=head is None)
        return weights if head is None else weights[:, head]


def _rows(state: DecoderState) -> int:
    return state["layers"][0]["self_k"].size(0) if state["layers"] else state["src_mask"].size(0) * state["beam"]


def _decoded(state: DecoderState) -> int:
    return state["layers"][0]["self_k"].size(2) if state["layers"] else 0


def _self_mask(state: DecoderState, length: int) -> Tensor:
    """The state's cache mask (rows, length): its own (or all True), with False slots added in front."""
    rows, decoded = _rows(state), _decoded(state)
    mask = state.get("self_mask")
    if mask is None:
        mask = torch.ones(rows, decoded, dtype=torch.bool, device=state["src_mask"].device)
    return _pad_left(mask, length, 1)


def _positions(state: DecoderState, rows: int) -> Tensor:
    pos = state["pos"]
    if isinstance(pos, Tensor):
        return pos
    return torch.full((rows,), pos, dtype=torch.long, device=state["src_mask"].device)


def _pad_left(t: Tensor, length: int, dim: int) -> Tensor:
    """`t` with zeros (False) in front along `dim`, up to `length`."""
    missing = length - t.size(dim)
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _pad_right(t: Tensor, length: int, dim: int) -> Tensor:
    """`t` with zeros (False) after it along `dim`, up to `length`."""
    missing = length - t.size(dim)
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def _select_row_tensors(state: DecoderState, index: Tensor) -> DecoderState:
    """The per-row tensors at the state's top level (positions, cache mask), at rows `index`."""
    return {
        key: state[key].index_select(0, index) for key in ("pos", "self_mask") if isinstance(state.get(key), Tensor)
    }
