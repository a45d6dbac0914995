"""Paper-scale MoE architectures as HF config objects, built locally from their published config values.

The cost model's ``projection`` mode prices a round for these architectures (which no CPU here can
train) while accuracy comes from the small model actually trained. Nothing is downloaded: each
config is constructed from the values in the checkpoint's published ``config.json`` (the Hub repo is
named in ``hf_id``). Only fields that shape the network are set; RoPE scaling (DeepSeek-V2-Lite's
YaRN) is left out because it changes neither parameter counts nor FLOPs.

Two architectures have no transformers class of their own and are expressed in a close family,
marked ``approximate``:

- LLaMA-MoE-v1-3.5B (4/16), FLUX's "LLaMA-MoE 6.7B, 32 layers, 16 experts/layer": LLaMA-2-7B with each
  FFN split into 16 experts of width 688, 4 active per token, written as a Mixtral config. Its real
  router is a small two-layer MLP gate (a few thousand parameters per layer, negligible here).
- DeepSeekMoE-16B (FLUX's second model: 28 layers, 64 routed + 2 shared experts, top-6, a dense
  first layer, ordinary multi-head attention) as a Qwen2-MoE config: the two shared experts become
  one shared expert of twice the width (the same parameters and FLOPs) and ``mlp_only_layers=[0]``
  is the dense first layer; Qwen2-MoE adds a 1-output shared-expert gate (hidden_size parameters).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import DeepseekV2Config, MixtralConfig, OlmoeConfig, PretrainedConfig, Qwen2MoeConfig


@dataclass(frozen=True)
class PaperArch:
    """A paper-scale architecture: how to build its config and the sizes its authors publish.

    ``published_total`` / ``published_active``: parameter counts from the model card or paper
    (``active`` = parameters used per token, as each publisher counts them: with the input embedding
    unless ``active_counts_embedding`` is False; see ``note``).
    """

    name: str
    hf_id: str
    build: Callable[[], PretrainedConfig]
    published_total: float
    published_active: float
    approximate: bool = False
    active_counts_embedding: bool = True
    note: str = ""


def _olmoe_1b_7b() -> PretrainedConfig:
    # allenai/OLMoE-1B-7B-0924 config.json
    return OlmoeConfig(
        vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
        num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, norm_topk_prob=False,
        router_aux_loss_coef=0.01, tie_word_embeddings=False, pad_token_id=1, eos_token_id=50279,
    )


def _mixtral_8x7b() -> PretrainedConfig:
    # mistralai/Mixtral-8x7B-v0.1 config.json
    return MixtralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1e6, router_aux_loss_coef=0.02,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )


def _deepseek_v2_lite() -> PretrainedConfig:
    # deepseek-ai/DeepSeek-V2-Lite config.json (MLA attention with no query compression)
    return DeepseekV2Config(
        vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
        num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16, n_routed_experts=64,
        n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1, kv_lora_rank=512,
        q_lora_rank=None, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_group=1,
        topk_group=1, topk_method="greedy", routed_scaling_factor=1.0, norm_topk_prob=False,
        max_position_embeddings=163840, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=100000, eos_token_id=100001,
    )


def _qwen15_moe_a27b() -> PretrainedConfig:
    # Qwen/Qwen1.5-MoE-A2.7B config.json
    return Qwen2MoeConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408,
        shared_expert_intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=16, num_experts=60, num_experts_per_tok=4, decoder_sparse_step=1,
        norm_topk_prob=False, max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=1e6,
        router_aux_loss_coef=0.001, use_sliding_window=False, tie_word_embeddings=False,
        bos_token_id=151643, eos_token_id=151643,
    )


def _llama_moe_35b() -> PretrainedConfig:
    # llama-moe/LLaMA-MoE-v1-3_5B-4_16 (LLaMA-2-7B, FFN 11008 split into 16 x 688, top-4) as Mixtral.
    return MixtralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=688, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, num_local_experts=16, num_experts_per_tok=4,
        max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )


def _deepseek_moe_16b() -> PretrainedConfig:
    # deepseek-ai/deepseek-moe-16b-base (MHA, 64 routed + 2 shared experts of 1408, top-6, dense layer 0)
    # as Qwen2-MoE: one shared expert of width 2 x 1408.
    return Qwen2MoeConfig(
        vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
        shared_expert_intermediate_size=2 * 1408, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=16, num_experts=64, num_experts_per_tok=6, decoder_sparse_step=1,
        mlp_only_layers=[0], qkv_bias=False, norm_topk_prob=False, max_position_embeddings=4096,
        rms_norm_eps=1e-6, rope_theta=10000.0, use_sliding_window=False, tie_word_embeddings=False,
        bos_token_id=100000, eos_token_id=100001,
    )


PAPER_ARCHS: dict[str, PaperArch] = {
    a.name: a
    for a in (
        PaperArch("olmoe-1b-7b", "allenai/OLMoE-1B-7B-0924", _olmoe_1b_7b, 6.9e9, 1.3e9,
                  note="FLAME's base model. OLMoE paper: 6.9B total, 1.3B active."),
        PaperArch("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", _mixtral_8x7b, 46.7e9, 12.9e9,
                  note="Mistral AI: 46.7B total, 12.9B used per token."),
        PaperArch("deepseek-v2-lite", "deepseek-ai/DeepSeek-V2-Lite", _deepseek_v2_lite, 15.7e9, 2.4e9,
                  active_counts_embedding=False,
                  note="DeepSeek-V2 paper: 15.7B total, 2.4B activated (their count leaves out the "
                  "input embedding)."),
        PaperArch("qwen1.5-moe-a2.7b", "Qwen/Qwen1.5-MoE-A2.7B", _qwen15_moe_a27b, 14.3e9, 2.7e9,
                  note="Qwen blog: 14.3B total, 2.7B activated."),
        PaperArch("llama-moe-3.5b", "llama-moe/LLaMA-MoE-v1-3_5B-4_16", _llama_moe_35b, 6.7e9, 3.5e9,
                  approximate=True,
                  note="FLUX's LLaMA-MoE (6.7B, 32 layers, 16 experts/layer); 3.5B activated with top-4. "
                  "Mixtral-style approximation (MLP gate replaced by a linear router)."),
        PaperArch("deepseek-moe-16b", "deepseek-ai/deepseek-moe-16b-base", _deepseek_moe_16b, 16.4e9, 2.8e9,
                  approximate=True,
                  note="FLUX's DeepSeek-MoE (16.4B, 28 layers, 64 experts/layer); 2.8B activated. "
                  "Qwen2-MoE-style approximation (2 shared experts as one of double width)."),
    )
}


def paper_arch(name: str) -> PaperArch:
    """The :class:`PaperArch` registered under ``name`` (short name or Hub id)."""
    for arch in PAPER_ARCHS.values():
        if name in (arch.name, arch.hf_id):
            return arch
    known = ", ".join(f"{a.name} ({a.hf_id})" for a in PAPER_ARCHS.values())
    raise KeyError(f"Unknown paper architecture {name!r}. Known: {known}. For another model pass its HF "
                   "config object (e.g. AutoConfig.from_pretrained on a local path) to the cost model.")


def paper_config(name: str) -> PretrainedConfig:
    """A fresh HF config of the paper-scale architecture ``name`` (short name or Hub id); no download."""
    return paper_arch(name).build()
