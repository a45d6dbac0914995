"""fedmoe.moe.routing: routing statistics recorded by read-only router hooks."""

import pytest
import torch

from fedmoe.moe import SUPPORTED_FAMILIES, moe_layers, record_routing
from fedmoe.moe.layers import decoder_of

X = torch.randint(3, 256, (3, 9), generator=torch.Generator().manual_seed(1))
MASK = torch.ones(3, 9, dtype=torch.long)
MASK[0, 6:] = 0  # right padding
MASK[2, :2] = 0  # left padding


def _hand_routing(model, **inputs):
    """Per MoE layer: top-k expert indices [B*S, k] recomputed from the router inputs and weights."""
    inputs_seen = {}
    handles = [
        layer.gate.register_forward_pre_hook(lambda m, a, i=layer.index: inputs_seen.__setitem__(i, a[0]))
        for layer in moe_layers(model)
    ]
    model(**inputs)
    for h in handles:
        h.remove()
    out = []
    for layer in moe_layers(model):
        logits = inputs_seen[layer.index].reshape(-1, 64).float() @ layer.router_weight.float().T
        out.append((logits, logits.topk(layer.top_k, dim=-1).indices))  # softmax and sigmoid keep the order
    return out


def _no_hooks(model):
    mods = [decoder_of(model)] + [layer.gate for layer in moe_layers(model)]
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in mods)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_counts_positions_probs_match_hand_computation(tiny_moe, family):
    model = tiny_moe(family, num_layers=3)
    plain = model(input_ids=X, attention_mask=MASK).logits
    with record_routing(model, positions=True, probs=True) as rec:
        hooked = model(input_ids=X, attention_mask=MASK).logits
    assert torch.equal(plain, hooked) and _no_hooks(model)
    valid = MASK.reshape(-1).bool()
    for layer, (logits, topk) in enumerate(_hand_routing(model, input_ids=X, attention_mask=MASK)):
        expected = torch.bincount(topk[valid].reshape(-1), minlength=8)
        assert torch.equal(rec.counts[layer], expected)
        assert rec.tokens[layer] == int(MASK.sum()) == 22
        assert torch.allclose(rec.frequencies()[layer], expected.double() / 22)
        assert rec.frequencies()[layer].sum().item() == pytest.approx(2.0)
        for e in range(8):
            hit = (topk == e).any(-1) & valid
            want = {(t // 9, t % 9) for t in hit.nonzero().flatten().tolist()}
            assert {tuple(p) for p in rec.positions(layer, e).tolist()} == want
        score = logits.sigmoid() if family == "deepseek_v3" else logits.softmax(-1)
        assert torch.allclose(rec.probs(layer), score[valid], atol=1e-6)
    assert rec.sequences == 3


def test_padding_can_be_kept_and_calls_accumulate(tiny_moe):
    model = tiny_moe("olmoe")
    with record_routing(model, positions=True, exclude_padding=False) as rec:
        model(input_ids=X, attention_mask=MASK)
        model(input_ids=X[:1])  # a second call without a mask
    assert rec.tokens.tolist() == [27 + 9, 27 + 9]
    assert torch.equal(rec.counts.sum(1), 2 * rec.tokens)
    seqs = torch.cat([rec.positions(0, e) for e in range(8)])[:, 0]
    assert set(seqs.tolist()) == {0, 1, 2, 3}  # the 2nd call's sequence is numbered 3
    rec.reset()
    assert rec.counts.sum() == 0 and rec.sequences == 0
    with pytest.raises(RuntimeError, match="probs=True"):
        rec.probs(0)


def test_hooks_removed_on_exception(tiny_moe):
    model = tiny_moe("mixtral")
    with pytest.raises(KeyError):
        with record_routing(model):
            raise KeyError("boom")
    assert _no_hooks(model)
