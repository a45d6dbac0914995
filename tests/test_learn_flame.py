"""``routed_norms``: the per-layer routed-experts output norm the learn notebook 05 plots against top-k_i, and the
reference pass of ``calibrate_scales``."""

import pytest
import torch

from fedmoe.methods.flame.rescaler import Rescaler, calibrate_scales, routed_norms
from fedmoe.moe.layers import moe_layers, set_top_k


def _batch(vocab, seed=0):
    ids = torch.randint(3, vocab, (3, 7), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 5:] = mask[2, 3:] = 0  # right padding
    return {"input_ids": ids * mask, "attention_mask": mask}


def test_routed_norms_by_hand_skip_padding_and_see_the_rescaler(tiny_moe):
    model = tiny_moe("olmoe", top_k=4).train()
    batch = _batch(model.config.vocab_size)
    valid = batch["attention_mask"].bool()
    seen = []  # the routed-experts output of every MoE layer, from a hook of our own
    hooks = [layer.block.experts.register_forward_hook(lambda _m, _i, out: seen.append(out))
             for layer in moe_layers(model)]
    model.eval()
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    model.train()
    by_hand = [float(out.reshape(*valid.shape, -1)[valid].double().norm()) for out in seen]
    assert routed_norms(model, batch) == pytest.approx(by_hand, rel=1e-6)
    assert model.training  # restored
    padded = dict(batch, attention_mask=torch.ones_like(batch["attention_mask"]))
    assert routed_norms(model, padded) != pytest.approx(by_hand, rel=1e-3)  # padding rows do count when unmasked
    with Rescaler([2.0, 3.0], trainable=False).applied(model):  # layer 0 sees the same input, so exactly 2x
        scaled = routed_norms(model, batch)
    assert scaled[0] == pytest.approx(2.0 * by_hand[0], rel=1e-5) and scaled[1] != pytest.approx(by_hand[1])


def test_routed_norms_shrink_at_lower_top_k_and_calibration_restores_them(tiny_moe):
    model = tiny_moe("olmoe", top_k=4)  # norm_topk_prob=False: the top-1 gate carries only part of the mass
    batch = _batch(model.config.vocab_size)
    full = routed_norms(model, batch)
    scales = calibrate_scales(model, batch, full_top_k=4, top_k=1)
    set_top_k(model, 1)
    assert all(low < high for low, high in zip(routed_norms(model, batch), full, strict=True))
    with Rescaler(scales, trainable=False).applied(model):
        assert routed_norms(model, batch) == pytest.approx(full, rel=1e-4)
