"""Uniform access to MoE layers across transformers v5 families, and the expert operations built on it:
routing statistics, keep/merge/freeze surgery, quantization, per-expert LoRA and memory accounting."""

from fedmoe.moe.families import SUPPORTED_FAMILIES, FamilySpec, family_spec, tiny_config
from fedmoe.moe.layers import MoELayer, decoder_of, family_of, moe_layers, set_top_k, unwrap
from fedmoe.moe.lora import (
    add_expert_lora,
    expert_lora_delta,
    get_expert_lora,
    load_lora_state_dict,
    lora_state_dict,
    set_expert_lora,
)
from fedmoe.moe.memory import MemoryBreakdown, ParamCounts, model_memory, param_counts, weight_bytes
from fedmoe.moe.quant import QuantReport, TensorQuant, quantize_model, quantize_tensor, quantized_nbytes
from fedmoe.moe.routing import RoutingRecorder, record_routing
from fedmoe.moe.surgery import (
    FrozenExperts,
    compact,
    expand,
    freeze_experts,
    keep_experts,
    merge_experts,
    save_pretrained,
)

__all__ = [
    "SUPPORTED_FAMILIES",
    "FamilySpec",
    "family_spec",
    "tiny_config",
    "MoELayer",
    "decoder_of",
    "family_of",
    "moe_layers",
    "set_top_k",
    "unwrap",
    "add_expert_lora",
    "expert_lora_delta",
    "get_expert_lora",
    "load_lora_state_dict",
    "lora_state_dict",
    "set_expert_lora",
    "MemoryBreakdown",
    "ParamCounts",
    "model_memory",
    "param_counts",
    "weight_bytes",
    "QuantReport",
    "TensorQuant",
    "quantize_model",
    "quantize_tensor",
    "quantized_nbytes",
    "RoutingRecorder",
    "record_routing",
    "FrozenExperts",
    "compact",
    "expand",
    "freeze_experts",
    "keep_experts",
    "merge_experts",
    "save_pretrained",
]
