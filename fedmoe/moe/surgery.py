"""Expert surgery on fused MoE layers: keep a subset, merge groups, freeze some while the rest train.

Bookkeeping lives in the config so that it survives ``save_pretrained``/``from_pretrained``:
``config.fedmoe_kept_experts`` (per MoE layer, the original index of every kept expert) and
``config.fedmoe_expert_map`` (per MoE layer, for each router expert the merged slot it routes to).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from fedmoe.moe.families import family_spec
from fedmoe.moe.layers import REMAP_BUFFER, MoELayer, family_of, moe_layers, set_top_k, unwrap
from fedmoe.moe.lora import expert_lora_slices

EXPERT_PARAMS = ("gate_up_proj", "down_proj")


def _per_layer(value: Sequence | Mapping | None, layers: list[MoELayer], what: str) -> list:
    """Normalise a per-MoE-layer argument (sequence of length L or {moe_index: value}) to a length-L list."""
    if isinstance(value, Mapping):
        bad = [k for k in value if not 0 <= int(k) < len(layers)]
        if bad:
            raise ValueError(
                f"{what}: MoE layer indices {bad} out of range; the model has {len(layers)} MoE layers."
            )
        return [value.get(i) for i in range(len(layers))]
    value = list(value)
    if len(value) != len(layers):
        raise ValueError(
            f"{what}: got {len(value)} entries but the model has {len(layers)} MoE layers; "
            "give one entry per MoE layer (or a {moe_layer_index: ...} dict)."
        )
    return value


def _check_plain(model: nn.Module, layers: list[MoELayer], what: str) -> None:
    if unwrap(model) is not model or any(hasattr(layer.block.experts, "base_layer") for layer in layers):
        raise ValueError(
            f"{what} changes the expert count and cannot run on a peft-wrapped model; "
            "apply it to the base model before add_expert_lora."
        )


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


def _slice_layer(layer: MoELayer, slots: torch.Tensor) -> None:
    """Keep fused-tensor slots ``slots`` (in order) in the experts module."""
    for name in EXPERT_PARAMS:
        _replace(layer.experts, name, getattr(layer.experts, name).detach().index_select(0, slots))
    layer.experts.num_experts = len(slots)


def _is_merged(layer: MoELayer) -> bool:
    return getattr(layer.gate, REMAP_BUFFER, None) is not None


# -- keep --------------------------------------------------------------------------------------------------
def keep_experts(
    model: nn.Module, keep: Sequence[int] | Sequence[Sequence[int]] | Mapping[int, Sequence[int]]
) -> nn.Module:
    """Keep only the experts ``keep`` in every MoE layer, in place (FMES-style pruning); returns ``model``.

    ``keep``: one list of expert indices for all layers, or one list per MoE layer. Kept experts keep
    their relative order (indices are sorted). transformers configs hold one expert count for every
    layer, so every layer must keep the same number. Fused tensors, router rows (and DeepSeek-V3's
    score-correction bias) are sliced; ``num_experts`` is updated on routers, experts, config and
    model; top_k is clipped to the new count. ``config.fedmoe_kept_experts`` records the original
    indices. The result saves and reloads with plain ``save_pretrained``/``from_pretrained``.
    """
    layers = moe_layers(model)
    _check_plain(model, layers, "keep_experts")
    if any(_is_merged(layer) for layer in layers):
        raise ValueError("keep_experts on a merged model is not supported; keep experts before merging.")
    if not isinstance(keep, Mapping) and keep and all(isinstance(k, int) for k in keep):
        keep_list = [list(keep)] * len(layers)
    else:
        keep_list = _per_layer(keep, layers, "keep")
    per_layer = []
    for layer, indices in zip(layers, keep_list, strict=True):
        idx = sorted(int(i) for i in (indices or []))
        num = layer.num_router_experts
        if not idx or len(set(idx)) != len(idx) or idx[0] < 0 or idx[-1] >= num:
            raise ValueError(
                f"keep for MoE layer {layer.index} must be distinct indices in 0..{num - 1}, got {indices}."
            )
        per_layer.append(idx)
    counts = {len(idx) for idx in per_layer}
    if len(counts) != 1:
        raise ValueError(
            f"keep_experts keeps {sorted(counts)} experts in different layers; a transformers config "
            "has one expert count, so keep the same number per layer (or merge instead)."
        )
    new_num = counts.pop()
    config = unwrap(model).config
    if family_of(model) == "deepseek_v3" and new_num < 2 * (getattr(config, "n_group", None) or 1):
        raise ValueError(
            "DeepSeek-V3 routing scores each expert group by its top-2 experts; keep at least 2 "
            "experts per group."
        )
    _check_groups(config, per_layer, layers[0].num_router_experts)
    previous = getattr(config, "fedmoe_kept_experts", None)
    for layer, idx in zip(layers, per_layer, strict=True):
        slots = torch.tensor(idx, dtype=torch.long, device=layer.router_weight.device)
        _slice_layer(layer, slots)
        _replace(layer.gate, "weight", layer.gate.weight.detach().index_select(0, slots))
        bias = getattr(layer.gate, "e_score_correction_bias", None)
        if bias is not None:
            layer.gate.e_score_correction_bias = bias.index_select(0, slots)
    setattr(config, family_spec(family_of(model)).experts_key, new_num)
    for module in unwrap(model).modules():  # routers, experts, and the causal LM (its aux loss reads it)
        if isinstance(getattr(module, "num_experts", None), int):
            module.num_experts = new_num
    config.fedmoe_kept_experts = [
        [previous[layer][i] for i in idx] if previous else idx for layer, idx in enumerate(per_layer)
    ]
    if layers[0].top_k > new_num:
        set_top_k(model, new_num)
    return model


def _check_groups(config, per_layer: list[list[int]], num: int) -> None:
    """DeepSeek group-limited routing needs the same number of kept experts in every expert group."""
    n_group = getattr(config, "n_group", None) or 1
    grouped = getattr(config, "topk_method", "group_limited_greedy") != "greedy"
    if n_group <= 1 or not grouped:
        return
    size = num // n_group
    for idx in per_layer:
        per_group = {g: sum(1 for i in idx if i // size == g) for g in range(n_group)}
        if len(set(per_group.values())) != 1:
            raise ValueError(
                f"Group-limited routing ({n_group} groups) needs the same number of kept experts "
                f"per group, got {per_group}; keep equally many per group or set n_group=1."
            )


# -- merge -------------------------------------------------------------------------------------------------
def _remap_hook(module: nn.Module, args: tuple, output: tuple) -> tuple:
    """Router forward hook: rewrite top-k indices from router experts to merged slots (weights unchanged)."""
    logits, weights, index = output
    return logits, weights, getattr(module, REMAP_BUFFER)[index]


def _install_remap(layer: MoELayer, remap: torch.Tensor) -> None:
    layer.gate.register_buffer(REMAP_BUFFER, remap.to(layer.router_weight.device), persistent=False)
    if _remap_hook not in layer.gate._forward_hooks.values():
        layer.gate.register_forward_hook(_remap_hook)


def _remove_remap(layer: MoELayer) -> None:
    delattr(layer.gate, REMAP_BUFFER)
    for key in [k for k, hook in layer.gate._forward_hooks.items() if hook is _remap_hook]:
        del layer.gate._forward_hooks[key]


def merge_experts(
    model: nn.Module,
    groups: Sequence[Sequence[Sequence[int]] | None] | Mapping,
    weights: Sequence[Sequence[float] | torch.Tensor | None] | Mapping | None = None,
) -> nn.Module:
    """Merge groups of experts into one expert each, in place (FLUX's non-tuning experts); returns ``model``.

    ``groups``: per MoE layer (list of length L or {moe_index: groups}) a partition of the router's
    expert indices 0..E-1; ``None`` leaves a layer alone. ``weights``: per layer alpha_e for every
    expert (length E) or None (uniform). Group c becomes W_c = sum_{e in c} alpha_e / sum alpha * W_e for
    both fused tensors (the plain mean where a group's weights sum to 0). Slots are ordered by each
    group's smallest index, so all-singleton groups leave the model unchanged. The router keeps its E
    rows; a router hook re-maps each chosen index to its slot (duplicates in top-k add their weights).
    ``config.fedmoe_expert_map`` records the map. Save with :func:`save_pretrained` (expanded standard
    layout) and restore the compact layout with :func:`compact` after ``from_pretrained``.
    """
    layers = moe_layers(model)
    _check_plain(model, layers, "merge_experts")
    if any(_is_merged(layer) for layer in layers):
        raise ValueError("The model is already merged; call expand(model) before merging again.")
    group_list = _per_layer(groups, layers, "groups")
    weight_list = _per_layer(weights, layers, "weights") if weights is not None else [None] * len(layers)
    expert_map = []
    for layer, layer_groups, alpha in zip(layers, group_list, weight_list, strict=True):
        num = layer.num_router_experts
        if layer_groups is None:
            expert_map.append(list(range(num)))
            continue
        parts = sorted((sorted(int(i) for i in g) for g in layer_groups), key=lambda g: g[0] if g else -1)
        flat = [i for g in parts for i in g]
        if any(not g for g in parts) or sorted(flat) != list(range(num)):
            raise ValueError(
                f"groups for MoE layer {layer.index} must partition 0..{num - 1} into non-empty groups, "
                f"got {layer_groups}."
            )
        alpha = (
            torch.ones(num) if alpha is None else torch.as_tensor(alpha, dtype=torch.float64).flatten().cpu()
        )
        if alpha.numel() != num or bool((alpha < 0).any()):
            raise ValueError(f"weights for MoE layer {layer.index} must be {num} non-negative numbers.")
        remap = torch.empty(num, dtype=torch.long)
        merged = {name: [] for name in EXPERT_PARAMS}
        for slot, members in enumerate(parts):
            remap[members] = slot
            w = alpha[members]
            w = torch.ones_like(w) if float(w.sum()) == 0 else w
            w = w / w.sum()
            for name in EXPERT_PARAMS:
                stack = getattr(layer.experts, name).detach()[members]
                merged[name].append(torch.einsum("e,e...->...", w.to(stack.dtype).to(stack.device), stack))
        for name in EXPERT_PARAMS:
            _replace(layer.experts, name, torch.stack(merged[name]))
        layer.experts.num_experts = len(parts)
        _install_remap(layer, remap)
        expert_map.append(remap.tolist())
    unwrap(model).config.fedmoe_expert_map = expert_map
    return model


def _expanded(layer: MoELayer) -> dict[str, torch.Tensor]:
    """Standard-layout tensors of a merged layer: each router expert's slot holds its merged expert."""
    remap = layer.expert_map
    return {name: getattr(layer.experts, name).detach().index_select(0, remap) for name in EXPERT_PARAMS}


def expand(model: nn.Module) -> nn.Module:
    """Undo the compact layout of a merged model in place: one slot per router expert, holding its merged
    expert, no re-mapping hook; outputs are unchanged. ``config.fedmoe_expert_map`` stays for :func:`compact`.
    """
    for layer in moe_layers(model):
        if _is_merged(layer):
            for name, value in _expanded(layer).items():
                _replace(layer.experts, name, value)
            layer.experts.num_experts = layer.num_router_experts
            _remove_remap(layer)
    return model


def compact(model: nn.Module) -> nn.Module:
    """Re-apply ``config.fedmoe_expert_map`` to an expanded model (e.g. just loaded with ``from_pretrained``):
    keep one slot per merged group and re-map the router; outputs are unchanged, memory shrinks.
    Raises if the experts of a group no longer hold identical weights (e.g. the expanded model was trained).
    """
    expert_map = getattr(unwrap(model).config, "fedmoe_expert_map", None)
    if expert_map is None:
        return model
    layers = moe_layers(model)
    for layer, slots in zip(layers, _per_layer(expert_map, layers, "fedmoe_expert_map"), strict=True):
        if _is_merged(layer) or slots == list(range(layer.num_router_experts)):
            continue
        remap = torch.tensor(slots, dtype=torch.long)
        reps = [slots.index(s) for s in range(max(slots) + 1)]
        for name in EXPERT_PARAMS:
            param = getattr(layer.experts, name)
            for e, s in enumerate(slots):
                if not torch.equal(param[e], param[reps[s]]):
                    raise ValueError(
                        f"MoE layer {layer.index}: experts {reps[s]} and {e} share merged slot {s} but "
                        "hold different weights; the model was changed after expanding. Merge it again."
                    )
        _slice_layer(layer, torch.tensor(reps, dtype=torch.long, device=layer.router_weight.device))
        _install_remap(layer, remap)
    return model


def save_pretrained(model: nn.Module, path: str | os.PathLike, **kwargs) -> None:
    """``model.save_pretrained(path)`` that also handles merged models: writes the expanded standard layout,
    so plain ``from_pretrained`` loads an equivalent standard model (then :func:`compact` it)."""
    base = unwrap(model)
    layers = moe_layers(base)
    if not any(_is_merged(layer) for layer in layers):
        base.save_pretrained(path, **kwargs)
        return
    state = base.state_dict()
    names = {id(t): k for k, t in base.state_dict(keep_vars=True).items()}
    for layer in layers:
        if _is_merged(layer):
            for name, value in _expanded(layer).items():
                state[names[id(getattr(layer.experts, name))]] = value
    base.save_pretrained(path, state_dict=state, **kwargs)


# -- freeze ------------------------------------------------------------------------------------------------
class FrozenExperts:
    """Keeps chosen experts bit-identical while the rest of the model trains.

    Two mechanisms, both needed: gradient hooks zero the frozen slices' gradients (so they do not feed
    gradient clipping or optimizer moments), and :meth:`restore` copies the saved slices back, which
    undoes what the optimizer still does to them (decoupled weight decay, momentum from before).
    ``freeze_experts(..., optimizer=opt)`` runs :meth:`restore` after every ``opt.step()``; otherwise call
    it yourself after each step. Use as a context manager or call :meth:`remove` when done. Covers the
    fused expert tensors when they train and the experts' LoRA slices on a peft model.
    """

    def __init__(
        self, slices: list[tuple[torch.Tensor, int, torch.Tensor]], optimizer: torch.optim.Optimizer | None
    ) -> None:
        self._slices = [(p, dim, pos, p.detach().index_select(dim, pos).clone()) for p, dim, pos in slices]
        self._handles = [
            p.register_hook(lambda g, d=dim, i=pos: g.index_fill(d, i, 0)) for p, dim, pos in slices
        ]
        if optimizer is not None:
            self._handles.append(optimizer.register_step_post_hook(lambda *_: self.restore()))

    def restore(self) -> None:
        """Copy the saved frozen slices back into their parameters."""
        with torch.no_grad():
            for param, dim, pos, saved in self._slices:
                param.index_copy_(dim, pos, saved)

    def remove(self) -> None:
        """Remove the gradient hooks and the optimizer hook (the frozen values stay as they are)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FrozenExperts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def freeze_experts(
    model: nn.Module,
    frozen: Sequence[Iterable[int]] | Mapping[int, Iterable[int]],
    optimizer: torch.optim.Optimizer | None = None,
) -> FrozenExperts:
    """Freeze, per MoE layer (list of length L or {moe_index: slots}), the expert slots ``frozen``.

    Returns a :class:`FrozenExperts` handle: pass ``optimizer`` (or call ``handle.restore()`` after each
    ``optimizer.step()``) and the frozen experts stay bit-identical even under AdamW weight decay.
    Slots are fused-tensor indices (after a merge, see ``MoELayer.expert_map``).
    """
    layers = moe_layers(model)
    slices = []
    for layer, indices in zip(layers, _per_layer(frozen, layers, "frozen"), strict=True):
        idx = sorted({int(i) for i in (indices or [])})
        if not idx:
            continue
        if idx[0] < 0 or idx[-1] >= layer.num_experts:
            raise ValueError(
                f"frozen experts {idx} out of range for MoE layer {layer.index} ({layer.num_experts} slots)."
            )
        pos = torch.tensor(idx, dtype=torch.long, device=layer.router_weight.device)
        slices += [
            (getattr(layer.experts, n), 0, pos)
            for n in EXPERT_PARAMS
            if getattr(layer.experts, n).requires_grad
        ]
        slices += [s for s in expert_lora_slices(layer, idx) if s[0].requires_grad]
    return FrozenExperts(slices, optimizer)
