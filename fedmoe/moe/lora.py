"""Per-expert LoRA on fused MoE experts through peft ``target_parameters``; access to one expert's adapter.

peft gives a fused parameter [E, out, in] one ``lora_A`` [E*r, in] and one ``lora_B`` [out, E*r]. Expert
e owns ``A_e = lora_A[e*r:(e+1)*r]`` and ``B_e = lora_B[:, e::E]``, so its effective weight is
``W_e + scaling * B_e @ A_e`` with ``scaling = alpha / r`` (tested in tests/test_moe_lora.py).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import peft
import torch
from torch import nn

from fedmoe.moe.layers import MoELayer, moe_layers

if TYPE_CHECKING:
    from peft import PeftModel

EXPERT_TARGETS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def add_expert_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    *,
    adapter_name: str = "default",
    init_lora_weights: bool = True,
    **lora_kwargs,
) -> PeftModel:
    """Wrap ``model`` in a ``PeftModel`` giving every routed expert its own rank-``r`` LoRA on both fused
    tensors (``lora_dropout`` is 0: peft cannot apply dropout to parameter targets). Only the LoRA
    tensors train. ``lora_kwargs`` go to ``LoraConfig`` (e.g. ``target_modules`` to adapt more)."""
    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}.")
    if lora_kwargs.get("lora_dropout"):
        raise ValueError("lora_dropout must be 0 for LoRA on fused expert parameters (a peft restriction).")
    moe_layers(model)
    config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        init_lora_weights=init_lora_weights,
        target_parameters=list(EXPERT_TARGETS),
        **{"target_modules": [], **lora_kwargs},
    )
    return peft_model(model, config, adapter_name=adapter_name)


def peft_model(model: nn.Module, config, **kwargs) -> PeftModel:
    """``peft.get_peft_model(model, config, **kwargs)`` without the FutureWarning peft triggers by reading
    transformers' deprecated ``is_gradient_checkpointing`` alias (a library interplay, not the caller's doing)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(model, config, **kwargs)


def expert_lora_wrappers(layer: MoELayer) -> dict[str, nn.Module]:
    """{parameter name: peft ``ParamWrapper``} for the fused tensors of ``layer`` (empty without LoRA)."""
    wrappers, module = {}, layer.block.experts
    while hasattr(module, "base_layer"):
        if hasattr(module, "parameter_name"):
            wrappers[module.parameter_name] = module
        module = module.base_layer
    return wrappers


def _wrappers(model: nn.Module, moe_layer_index: int) -> tuple[MoELayer, dict[str, nn.Module]]:
    layers = moe_layers(model)
    if not 0 <= moe_layer_index < len(layers):
        raise IndexError(f"MoE layer {moe_layer_index} out of range; the model has {len(layers)} MoE layers.")
    wrappers = expert_lora_wrappers(layers[moe_layer_index])
    if not wrappers:
        raise ValueError("The model has no expert LoRA; create it with add_expert_lora(model, r, alpha).")
    return layers[moe_layer_index], wrappers


def _positions(wrapper: nn.Module, adapter: str, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows of lora_A, columns of lora_B) that belong to ``expert``."""
    if adapter not in wrapper.lora_A:
        raise KeyError(f"No LoRA adapter {adapter!r}; the model has {list(wrapper.lora_A)}.")
    r, num = wrapper.r[adapter], wrapper.num_experts
    if not 0 <= expert < num:
        raise IndexError(f"Expert {expert} out of range; the fused tensor holds {num} experts.")
    device = wrapper.lora_A[adapter].weight.device
    return (
        torch.arange(expert * r, (expert + 1) * r, device=device),
        torch.arange(expert, r * num, num, device=device),
    )


def expert_lora_slices(
    layer: MoELayer, experts: list[int], adapter: str = "default"
) -> list[tuple[nn.Parameter, int, torch.Tensor]]:
    """(parameter, dim, positions) of the LoRA entries of ``experts`` in ``layer`` (empty without LoRA)."""
    slices = []
    for wrapper in expert_lora_wrappers(layer).values():
        if adapter not in wrapper.lora_A:
            continue
        rows, cols = zip(*(_positions(wrapper, adapter, e) for e in experts), strict=True)
        slices.append((wrapper.lora_A[adapter].weight, 0, torch.cat(rows)))
        slices.append((wrapper.lora_B[adapter].weight, 1, torch.cat(cols)))
    return slices


def get_expert_lora(
    model: nn.Module, moe_layer_index: int, expert: int, adapter: str = "default"
) -> dict[str, torch.Tensor]:
    """Copies of one expert's LoRA: ``{"gate_up_proj.lora_A": [r, H], "gate_up_proj.lora_B": [2I, r],
    "down_proj.lora_A": [r, I], "down_proj.lora_B": [H, r]}``."""
    _, wrappers = _wrappers(model, moe_layer_index)
    out = {}
    for name, wrapper in sorted(wrappers.items()):
        rows, cols = _positions(wrapper, adapter, expert)
        out[f"{name}.lora_A"] = wrapper.lora_A[adapter].weight.detach()[rows].clone()
        out[f"{name}.lora_B"] = wrapper.lora_B[adapter].weight.detach()[:, cols].clone()
    return out


def set_expert_lora(
    model: nn.Module,
    moe_layer_index: int,
    expert: int,
    tensors: dict[str, torch.Tensor],
    adapter: str = "default",
) -> None:
    """Write one expert's LoRA (the dict :func:`get_expert_lora` returns) into the model, in place."""
    _, wrappers = _wrappers(model, moe_layer_index)
    expected = {f"{n}.lora_{ab}" for n in wrappers for ab in "AB"}
    if set(tensors) != expected:
        raise KeyError(f"set_expert_lora needs exactly the keys {sorted(expected)}, got {sorted(tensors)}.")
    with torch.no_grad():
        for name, wrapper in wrappers.items():
            rows, cols = _positions(wrapper, adapter, expert)
            a, b = wrapper.lora_A[adapter].weight, wrapper.lora_B[adapter].weight
            a[rows] = tensors[f"{name}.lora_A"].to(a)
            b[:, cols] = tensors[f"{name}.lora_B"].to(b)


def expert_lora_delta(
    model: nn.Module, moe_layer_index: int, expert: int, adapter: str = "default"
) -> dict[str, torch.Tensor]:
    """The weight change one expert's LoRA applies: ``{name: scaling * B_e @ A_e}`` shaped like that expert's
    ``gate_up_proj`` [2I, H] / ``down_proj`` [H, I]."""
    _, wrappers = _wrappers(model, moe_layer_index)
    lora = get_expert_lora(model, moe_layer_index, expert, adapter)
    return {n: w.scaling[adapter] * lora[f"{n}.lora_B"] @ lora[f"{n}.lora_A"] for n, w in wrappers.items()}


def lora_state_dict(model: nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    """All adapter tensors of a peft model (detached copies), as peft saves them."""
    return {
        k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(model, adapter_name=adapter).items()
    }


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], adapter: str = "default") -> None:
    """Load adapter tensors from :func:`lora_state_dict` into a peft model of the same shape; raises on
    missing or unexpected LoRA keys."""
    result = peft.set_peft_model_state_dict(model, state, adapter_name=adapter)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise KeyError(
            f"LoRA state mismatch: missing {missing[:4]}, unexpected {list(result.unexpected_keys)[:4]}."
        )
