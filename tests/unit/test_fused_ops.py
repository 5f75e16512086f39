"""The speed-motivated replacements (fused loss, cheap dropout mask, attention with dropout) against references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqtool.models.attention import MultiHeadAttention, _attention_with_dropout
from seqtool.models.dropout import Dropout, dropout, keep_mask
from seqtool.train import loss as loss_module
from seqtool.train.loss import label_smoothed_nll, projected_label_smoothed_nll


def _reference_loss(logits: torch.Tensor, target: torch.Tensor, pad: int, eps: float) -> torch.Tensor:
    """Autograd reference: explicit smoothed target distribution over the non-pad ids, pad rows ignored."""
    vocab = logits.size(-1)
    q = torch.full(logits.shape, eps / (vocab - 2))
    q[..., pad] = 0.0
    q.scatter_(-1, target.unsqueeze(-1), 1.0 - eps)
    per_token = -(q * F.log_softmax(logits.float(), -1)).sum(-1)
    return per_token.masked_fill(target == pad, 0.0).sum()


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fused_loss_value_and_gradient_match_autograd(eps: float) -> None:
    torch.manual_seed(0)
    pad = 3
    logits = torch.randn(5, 7, 11, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 11, (5, 7))
    target[0, 4:] = pad
    ref_logits = logits.detach().clone().requires_grad_(True)
    loss, nll = label_smoothed_nll(logits, target, pad, eps)
    ref = _reference_loss(ref_logits, target, pad, eps)
    torch.testing.assert_close(loss.double(), ref.double(), atol=1e-5, rtol=1e-5)
    expected_nll = F.cross_entropy(ref_logits.detach().view(-1, 11), target.view(-1), ignore_index=pad, reduction="sum")
    torch.testing.assert_close(nll.double(), expected_nll, atol=1e-5, rtol=1e-5)
    (loss * 0.5).backward()
    (ref * 0.5).backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, atol=1e-6, rtol=1e-5)
    assert logits.grad[0, 4:].abs().max() == 0  # pad positions get no gradient


def test_fused_loss_gradient_comes_back_in_bf16() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 13).bfloat16().requires_grad_(True)
    target = torch.randint(4, 13, (6,))
    loss, _ = label_smoothed_nll(logits, target, 3, 0.1)
    loss.backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
    ref_logits = logits.detach().float().requires_grad_(True)
    _reference_loss(ref_logits, target, 3, 0.1).backward()
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, atol=1e-2, rtol=1e-2)


def test_packed_loss_equals_padded_loss() -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 5, 9)
    target = torch.tensor([[4, 5, 2, 3, 3], [6, 7, 8, 5, 2], [4, 2, 3, 3, 3]])
    keep = target != 3
    padded = label_smoothed_nll(logits, target, 3, 0.1)
    packed = label_smoothed_nll(logits[keep], target[keep], 3, 0.1)
    torch.testing.assert_close(padded, packed)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("bias", [True, False])
def test_projection_fused_with_the_loss_matches_the_layer_then_the_loss(
    eps: float, bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Value and the gradients of features, weight and bias, in float64 (blocks of 4 rows: several, a partial last)."""
    monkeypatch.setattr(loss_module, "LOSS_BLOCK", 4)
    torch.manual_seed(0)
    pad, vocab, rows = 3, 11, 10
    layer = torch.nn.Linear(6, vocab, bias=bias).double()
    ref_layer = torch.nn.Linear(6, vocab, bias=bias).double()
    ref_layer.load_state_dict(layer.state_dict())
    features = torch.randn(rows, 6, dtype=torch.float64, requires_grad=True)
    ref_features = features.detach().clone().requires_grad_(True)
    target = torch.randint(0, vocab, (rows,))
    target[[2, 7]] = pad
    loss, nll = projected_label_smoothed_nll(features, layer, target, pad, eps, torch.float64)
    ref_loss, ref_nll = label_smoothed_nll(ref_layer(ref_features), target, pad, eps)
    # float64 throughout here; label_smoothed_nll computes in float32
    torch.testing.assert_close(loss, ref_loss.double(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(nll, ref_nll.double(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(
        loss, _reference_loss(ref_layer(ref_features), target, pad, eps).double(), atol=1e-5, rtol=1e-6
    )
    (loss * 0.5).backward()
    (ref_loss * 0.5).backward()
    assert features.grad is not None and ref_features.grad is not None
    torch.testing.assert_close(features.grad, ref_features.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer.weight.grad, ref_layer.weight.grad, atol=1e-6, rtol=1e-5)
    if bias:
        torch.testing.assert_close(layer.bias.grad, ref_layer.bias.grad, atol=1e-6, rtol=1e-5)
    assert features.grad[[2, 7]].abs().max() == 0  # pad positions get no gradient


def test_projection_fused_with_the_loss_in_bf16_is_the_autocast_layer_then_the_loss() -> None:
    """bf16 products as under autocast; float32 parameters and features get float32 gradients, close to autocast's."""
    torch.manual_seed(0)
    layer, target = torch.nn.Linear(32, 50), torch.randint(4, 50, (40,))
    features = torch.randn(40, 32, requires_grad=True)
    loss, _ = projected_label_smoothed_nll(features, layer, target, 3, 0.1, torch.bfloat16)
    loss.backward()
    grads = [features.grad, layer.weight.grad, layer.bias.grad]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    ref_features = features.detach().clone().requires_grad_(True)
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(ref_features)
    ref_loss, _ = label_smoothed_nll(logits, target, 3, 0.1)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, atol=0.05, rtol=2e-3)
    for got, ref in zip(grads, [ref_features.grad, layer.weight.grad, layer.bias.grad], strict=True):
        torch.testing.assert_close(got, ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("rows", [37, 48])
def test_bf16_rows_rounded_up_to_a_bucket_change_nothing(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The zero rows added for oneDNN's shape cache (ROW_BUCKET) add no loss and no gradient: the same value and
    gradients as without the bucket (37 rows: 11 zero rows added; 48: none needed)."""
    torch.manual_seed(0)
    layer, target = torch.nn.Linear(32, 50), torch.randint(3, 50, (rows,))
    target[5] = 3  # a pad target among the real rows

    def run(bucket: int) -> list[torch.Tensor]:
        monkeypatch.setattr(loss_module, "ROW_BUCKET", bucket)
        layer.zero_grad()
        features = torch.randn(rows, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
        loss, nll = projected_label_smoothed_nll(features, layer, target, 3, 0.1, torch.bfloat16)
        loss.backward()
        assert features.grad is not None and features.grad.shape == features.shape
        return [loss.detach(), nll, features.grad, layer.weight.grad.clone(), layer.bias.grad.clone()]

    for bucketed, plain in zip(run(16), run(1), strict=True):
        torch.testing.assert_close(bucketed, plain, atol=1e-4, rtol=1e-4)


def test_keep_mask_rate_and_independence() -> None:
    torch.manual_seed(0)
    mask = keep_mask((1000, 1000), 0.1, torch.device("cpu"))
    assert mask.shape == (1000, 1000) and mask.dtype == torch.bool
    rate = mask.float().mean().item()
    assert abs(rate - 0.9) < 0.002  # 1e6 draws: the standard error is 0.0003
    # the four lanes of a word are independent: neighbouring elements agree as often as chance says
    flat = mask.flatten().float()
    both = (flat[0::4] * flat[1::4]).mean().item()
    assert abs(both - 0.81) < 0.005
    assert keep_mask((7, 3), 0.0, torch.device("cpu")).all()  # odd sizes; p = 0 keeps everything


def test_dropout_scales_kept_elements_and_is_seeded() -> None:
    x = torch.ones(64, 64)
    torch.manual_seed(5)
    a = dropout(x, 0.25, training=True)
    torch.manual_seed(5)
    b = dropout(x, 0.25, training=True)
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, torch.tensor(1.0 / 0.75).item()}
    assert torch.equal(dropout(x, 0.25, training=False), x)
    layer = Dropout(0.5).eval()
    assert torch.equal(layer(x), x)
    with pytest.raises(ValueError):
        Dropout(1.5)


def test_dropout_gradient_is_the_mask() -> None:
    torch.manual_seed(3)
    x = torch.randn(50, 40, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    y.sum().backward()
    kept = y != 0
    torch.testing.assert_close(x.grad, kept.float() / 0.7)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_dropout_equals_sdpa_when_nothing_is_dropped(causal: bool) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    ours = _attention_with_dropout(q, k, v, None if causal else mask, causal, 0.0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_attention_dropout_zeroes_a_share_of_weights_in_training() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2, dropout=0.5)
    x = torch.randn(3, 9, 16)
    mha.eval()
    evaluated = mha(x, x, x)
    mha.train()
    trained = mha(x, x, x)
    assert not torch.allclose(trained, evaluated)
    mha.dropout = 0.0  # the training path without dropout is SDPA's: same output as in eval mode
    torch.testing.assert_close(mha(x, x, x), evaluated)
