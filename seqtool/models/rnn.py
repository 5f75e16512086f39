"""The GRU/LSTM encoder–decoder (Cho et al., 2014; Sutskever et al., 2014) with optional attention.

Notation: x = source, y = target, h_e[t] = encoder states (the memory), h_d[t] = top-layer decoder states.

- Encoder: embeddings -> (bi)directional multi-layer GRU/LSTM over the packed source, so padding never reaches the
  states. The context vector c = h_e[T_x] is the top layer's final state (bidirectional: forward final state
  at the last real token concatenated with the backward final state at the first token).
- Decoder initial state: tanh(W_init c) for every layer (LSTM cell states start at zero).
- Decoder input at step t: [embed(y[t-1]); c], for Bahdanau attention also a_t (see below).
- Readout: logits = W_out tanh(W_o [h_d[t]; ctx_t; embed(y[t-1])]), where ctx_t is
    * "none":     c, the fixed context (the textbook encoder–decoder);
    * "bahdanau": a_t = additive attention with the previous state h_d[t-1] as query, computed before the cell
                  and also fed into it (Bahdanau et al., 2015); needs a python loop over time in training;
    * "luong":    a_t = "general" attention with the current state h_d[t] as query, computed after the cell,
                  without input feeding (Luong et al., 2015, global attention); the decoder RNN then runs over the
                  whole target in one call and attention is one batched matrix product, as for "none".
- tie_output: W_o projects to embed_dim and W_out is the target embedding matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from seqtool.config import RNNConfig
from seqtool.models.attention import BahdanauAttention, LuongAttention
from seqtool.models.base import DecoderState, EncoderOutput, Seq2SeqModel
from seqtool.models.dropout import Dropout
from seqtool.runtime import cpu_bf16_supported
from seqtool.tokenizer import SpecialIds

_DEFAULTS = RNNConfig()  # the defaults live in config.py only

RNN_CELLS: dict[str, type[nn.RNNBase]] = {"gru": nn.GRU, "lstm": nn.LSTM}
ATTENTION_KINDS = ("none", "bahdanau", "luong")

RNNHidden = Tensor | tuple[Tensor, Tensor]


def run_recurrent(layer: nn.RNNBase, inputs: Tensor | PackedSequence, hidden: RNNHidden | None = None) -> tuple:
    """`layer(inputs, hidden)`, in fp32 under a CPU bf16 autocast where the CPU has no bf16 kernels: oneDNN's LSTM
    then fails ("could not create a primitive descriptor"), and the trainer and translator fall back to fp32 there
    anyway. Elsewhere autocast applies as usual."""
    if inputs.data.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or cpu_bf16_supported():
        return layer(inputs, hidden)
    with torch.autocast("cpu", enabled=False):
        if isinstance(hidden, tuple):
            hidden = (hidden[0].float(), hidden[1].float())
        elif hidden is not None:
            hidden = hidden.float()
        return layer(inputs.float(), hidden)


class RNNSeq2Seq(Seq2SeqModel):
    """GRU/LSTM encoder–decoder; the context c = h_e[T_x] is fed at every decoder step (see the module docstring).

    Decoder state (tensors batch-first, so `reorder_state` works unchanged): `hidden` (batch, decoder_layers,
    hidden_size), for LSTM also `cell` (same shape), `context` c (batch, enc_dim), `memory` (batch, src_len, enc_dim),
    `src_mask` (batch, src_len), and for Bahdanau attention `keys`, the projected memory (batch, src_len, hidden_size).
    """

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        specials: SpecialIds,
        cell: str = _DEFAULTS.cell,
        embed_dim: int = _DEFAULTS.embed_dim,
        hidden_size: int = _DEFAULTS.hidden_size,
        encoder_layers: int = _DEFAULTS.encoder_layers,
        decoder_layers: int = _DEFAULTS.decoder_layers,
        bidirectional: bool = _DEFAULTS.bidirectional,
        attention: str = _DEFAULTS.attention,
        dropout: float = _DEFAULTS.dropout,
        tie_output: bool = _DEFAULTS.tie_output,
        share_embeddings: bool = _DEFAULTS.share_embeddings,
    ) -> None:
        super().__init__()
        if cell not in RNN_CELLS:
            raise ValueError(f"unknown RNN cell {cell!r}; choose one of {sorted(RNN_CELLS)}")
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention {attention!r}; choose one of {list(ATTENTION_KINDS)}")
        if share_embeddings and src_vocab != tgt_vocab:
            raise ValueError(
                f"share_embeddings needs equal source and target vocabularies (got {src_vocab} and {tgt_vocab})"
            )
        self.specials = specials
        self.cell = cell
        self.attention_kind = attention
        self.bidirectional = bidirectional
        self.hidden_size = hidden_size
        self.decoder_num_layers = decoder_layers
        enc_dim = hidden_size * (2 if bidirectional else 1)
        rnn = RNN_CELLS[cell]

        self.tgt_embed = nn.Embedding(tgt_vocab, embed_dim, padding_idx=specials.pad)
        self.src_embed = (
            self.tgt_embed if share_embeddings else nn.Embedding(src_vocab, embed_dim, padding_idx=specials.pad)
        )
        self.dropout = Dropout(dropout)
        self.encoder = rnn(
            embed_dim,
            hidden_size,
            encoder_layers,
            batch_first=True,
            dropout=dropout if encoder_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.init_hidden = nn.Linear(enc_dim, decoder_layers * hidden_size)
        self.attention: BahdanauAttention | LuongAttention | None = None
        if attention == "bahdanau":
            self.attention = BahdanauAttention(hidden_size, enc_dim, hidden_size)
        elif attention == "luong":
            self.attention = LuongAttention(hidden_size, enc_dim)
        decoder_input = embed_dim + enc_dim * (2 if attention == "bahdanau" else 1)
        self.decoder = rnn(
            decoder_input, hidden_size, decoder_layers, batch_first=True, dropout=dropout if decoder_layers > 1 else 0.0
        )
        readout_dim = embed_dim if tie_output else hidden_size
        self.readout = nn.Linear(hidden_size + enc_dim + embed_dim, readout_dim)
        self.output = nn.Linear(readout_dim, tgt_vocab)
        for embed in dict.fromkeys((self.src_embed, self.tgt_embed)):  # ordered, shared counted once
            nn.init.normal_(embed.weight, mean=0.0, std=embed_dim**-0.5)
            with torch.no_grad():
                embed.weight[specials.pad].zero_()
        if tie_output:
            self.output.weight = self.tgt_embed.weight

    def encode(self, src: Tensor) -> EncoderOutput:
        """Memory h_e (batch, src_len, enc_dim) with zeros at padding; `final` is the context c (batch, enc_dim)."""
        src_mask = src != self.specials.pad  # (batch, src_len)
        lengths = src_mask.sum(dim=1).clamp(min=1).cpu()
        x = self.dropout(self.src_embed(src))  # (batch, src_len, embed_dim)
        packed, final = run_recurrent(
            self.encoder, pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        )
        memory, _ = pad_packed_sequence(packed, batch_first=True, total_length=src.size(1))
        h_n = final[0] if self.cell == "lstm" else final  # (layers * directions, batch, hidden_size)
        context = torch.cat([h_n[-2], h_n[-1]], dim=-1) if self.bidirectional else h_n[-1]
        return EncoderOutput(memory=memory, src_mask=src_mask, final=context)

    def init_state(self, enc: EncoderOutput) -> DecoderState:
        """Initial decoder hidden state tanh(W_init c) per layer, plus everything the attention needs."""
        context = enc.final
        hidden = torch.tanh(self.init_hidden(context)).view(context.size(0), self.decoder_num_layers, self.hidden_size)
        state: DecoderState = {"hidden": hidden, "context": context, "memory": enc.memory, "src_mask": enc.src_mask}
        if self.cell == "lstm":
            state["cell"] = torch.zeros_like(hidden)
        if isinstance(self.attention, BahdanauAttention):
            state["keys"] = self.attention.precompute(enc.memory)
        return state

    def _rnn_hidden(self, state: DecoderState) -> RNNHidden:
        """The state's batch-first hidden state(s) in the (layers, batch, hidden_size) layout nn.GRU/nn.LSTM want."""
        hidden = state["hidden"].transpose(0, 1).contiguous()
        return (hidden, state["cell"].transpose(0, 1).contiguous()) if self.cell == "lstm" else hidden

    def _with_hidden(self, state: DecoderState, final: RNNHidden) -> DecoderState:
        """A copy of the state holding the RNN's new hidden state(s), stored batch-first."""
        if self.cell == "lstm":
            return {**state, "hidden": final[0].transpose(0, 1), "cell": final[1].transpose(0, 1)}
        return {**state, "hidden": final.transpose(0, 1)}

    def _bahdanau_step(self, embedded: Tensor, state: DecoderState) -> tuple[Tensor, Tensor, Tensor, DecoderState]:
        """One Bahdanau decoder step: attend with h_d[t-1], then run the cell on [embed(y[t-1]); c; a_t].

        embedded (batch, embed_dim) -> h_d[t] (batch, hidden_size), a_t (batch, enc_dim), weights (batch, src_len).
        """
        attended, weights = self.attention(state["hidden"][:, -1], state["memory"], state["src_mask"], state["keys"])
        inputs = torch.cat([embedded, state["context"], attended], dim=-1)[:, None]  # (batch, 1, decoder_input)
        output, final = run_recurrent(self.decoder, inputs, self._rnn_hidden(state))
        return output[:, 0], attended, weights, self._with_hidden(state, final)

    def _readout(self, hidden: Tensor, context: Tensor, embedded: Tensor) -> Tensor:
        """Readout tanh(W_o [h_d; ctx; embed(y[t-1])]) with dropout, on (..., dim) inputs; `output` gives logits."""
        return self.dropout(torch.tanh(self.readout(torch.cat([hidden, context, embedded], dim=-1))))

    def _decode(self, enc: EncoderOutput, tgt_in: Tensor) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced readouts (batch, tgt_len, readout_dim) and attention weights (batch, tgt_len, src_len)."""
        state = self.init_state(enc)
        embedded = self.dropout(self.tgt_embed(tgt_in))  # (batch, tgt_len, embed_dim)
        if isinstance(self.attention, BahdanauAttention):
            hiddens, contexts, weights = [], [], []
            for t in range(tgt_in.size(1)):
                hidden, attended, step_weights, state = self._bahdanau_step(embedded[:, t], state)
                hiddens.append(hidden)
                contexts.append(attended)
                weights.append(step_weights)
            readout = self._readout(torch.stack(hiddens, 1), torch.stack(contexts, 1), embedded)
            return readout, torch.stack(weights, 1)
        # The decoder input does not depend on its outputs: run the whole target in one call.
        context = enc.final[:, None].expand(-1, tgt_in.size(1), -1)  # (batch, tgt_len, enc_dim)
        hidden, _ = run_recurrent(self.decoder, torch.cat([embedded, context], dim=-1), self._rnn_hidden(state))
        if self.attention is None:
            return self._readout(hidden, context, embedded), None
        attended, weights = self.attention(hidden, enc.memory, enc.src_mask)  # Luong: query h_d[t]
        return self._readout(hidden, attended, embedded), weights

    def features(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced readouts (batch, tgt_len, readout_dim), the input of the output projection."""
        return self._decode(self.encode(src), tgt_in)[0]

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """Feed tokens (batch,); returns logits (batch, tgt_vocab) and the new state (same maths as `forward`)."""
        embedded = self.dropout(self.tgt_embed(tokens))  # (batch, embed_dim)
        if isinstance(self.attention, BahdanauAttention):
            hidden, attended, _, state = self._bahdanau_step(embedded, state)
            return self.output(self._readout(hidden, attended, embedded)), state
        inputs = torch.cat([embedded, state["context"]], dim=-1)[:, None]  # (batch, 1, embed_dim + enc_dim)
        output, final = run_recurrent(self.decoder, inputs, self._rnn_hidden(state))
        hidden = output[:, 0]  # (batch, hidden_size)
        if self.attention is None:
            context = state["context"]
        else:
            context, _ = self.attention(hidden, state["memory"], state["src_mask"])
        return self.output(self._readout(hidden, context, embedded)), self._with_hidden(state, final)

    @torch.no_grad()
    def attention_weights(self, src: Tensor, tgt_in: Tensor, layer: int = -1, head: int | None = None) -> Tensor | None:
        """Attention weights (batch, tgt_len, src_len), or None without attention."""
        if self.attention is None:
            return None
        return self._decode(self.encode(src), tgt_in)[1]
