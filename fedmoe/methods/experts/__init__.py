"""The kit of FLUX-family methods (not a method): federated training of routed experts' full weights."""

from fedmoe.methods.experts.base import (
    ExpertClient,
    ExpertServer,
    aggregate_experts,
    expert_key,
    expert_tensors,
    fused_state,
    load_fused_state,
    parse_key,
    train_experts,
)

__all__ = ["ExpertClient", "ExpertServer", "aggregate_experts", "expert_key", "expert_tensors", "fused_state",
           "load_fused_state", "parse_key", "train_experts"]
