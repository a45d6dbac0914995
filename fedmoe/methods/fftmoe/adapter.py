"""FFT-MoE's sparse MoE adapter: M small experts and a router beside every decoder block's feed-forward.

For a token's hidden state x in R^d entering the block's feed-forward (a dense MLP or a pretrained MoE
block) the block's output becomes ``mlp(x) + A(x)`` with::

    l        = W_R x                                  router logits, W_R in R^{M x d}
    P        = softmax(l)                             full routing distribution (aux loss, diagnostics)
    T_K(x)   = indices of the K largest entries of l
    g_j      = exp(l_j) / sum_{i in T_K(x)} exp(l_i)  for j in T_K(x), else 0  (softmax renormalised over top-K)
    E_j(x)   = W2_j act(W1_j x),  W1_j in R^{b x d}, W2_j in R^{d x b}
    A(x)     = sum_{j in T_K(x)} g_j E_j(x)

``W2_j`` starts at zero, so ``A(x) = 0`` and the adapted model computes exactly the base model at
initialisation. K is an attribute (:func:`set_adapter_top_k`), not a shape: every client holds the same
tensors whatever its budget. Only the K chosen experts run (token dispatch per expert), so the adapter's
work per token is ``M*d`` (router) + ``K*2*d*b`` (experts) multiply-adds.

Placement: the adapter is a submodule ``fft_adapter`` of each block's ``mlp`` and is added to the mlp's
output by a forward hook, so the base model's module tree and parameter names stay as they were (the MoE
helpers of :mod:`fedmoe.moe` still find the base routers and experts) and adapter names are identical on
every client. Each forward keeps the last routing (``P`` and ``T_K``) for the auxiliary loss and the load
histograms (:func:`pop_routing`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fedmoe.moe.layers import decoder_of

ADAPTER_ATTR = "fft_adapter"
ROUTER_KEY = f".{ADAPTER_ATTR}.router"
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


class MoEAdapter(nn.Module):
    """M bottleneck experts (d -> b -> d) and a router W_R [M, d] with top-K gating (module docstring)."""

    def __init__(self, hidden_size: int, num_experts: int, bottleneck: int, top_k: int, activation: str = "gelu",
                 *, dtype: torch.dtype | None = None, device: torch.device | None = None):
        super().__init__()
        check_adapter_shape(num_experts, bottleneck, top_k, activation)
        self.num_experts, self.bottleneck, self.activation = num_experts, bottleneck, activation
        self.top_k = top_k
        kw = {"dtype": dtype, "device": device}
        self.router = nn.Linear(hidden_size, num_experts, bias=False, **kw)
        bound = 1 / math.sqrt(hidden_size)  # nn.Linear's default init range for the first layer
        self.w_in = nn.Parameter(torch.empty(num_experts, bottleneck, hidden_size, **kw).uniform_(-bound, bound))
        self.w_out = nn.Parameter(torch.zeros(num_experts, hidden_size, bottleneck, **kw))
        self.last_routing: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def top_k(self) -> int:
        """Experts each token is routed to (K_n of the client using the adapter)."""
        return self._top_k

    @top_k.setter
    def top_k(self, k: int) -> None:
        if not 1 <= int(k) <= self.num_experts:
            raise ValueError(f"adapter top_k={k} is impossible with {self.num_experts} adapter experts; "
                             f"choose 1 <= top_k <= {self.num_experts} (or raise num_experts)")
        self._top_k = int(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A(x) for hidden states ``x`` [..., d]; keeps ``(P [..., M], T_K [..., K])`` in ``last_routing``."""
        h = x.reshape(-1, x.shape[-1])
        logits = self.router(h)
        top_logits, top_idx = logits.topk(self.top_k, dim=-1)
        gates = top_logits.float().softmax(-1).to(h.dtype)
        act = ACTIVATIONS[self.activation]
        out = torch.zeros_like(h)
        for e in range(self.num_experts):
            tokens, slot = (top_idx == e).nonzero(as_tuple=True)
            if tokens.numel():
                y = F.linear(act(F.linear(h[tokens], self.w_in[e])), self.w_out[e])
                out = out.index_add(0, tokens, y * gates[tokens, slot, None])
        probs = logits.float().softmax(-1)
        self.last_routing = (probs.reshape(*x.shape[:-1], -1), top_idx.reshape(*x.shape[:-1], -1))
        return out.reshape(x.shape)


def check_adapter_shape(num_experts: int, bottleneck: int, top_k: int, activation: str = "gelu") -> None:
    """Raise a clear error for an impossible adapter (no experts, bottleneck <= 0, top_k outside 1..M)."""
    if num_experts < 1:
        raise ValueError(f"num_experts={num_experts}: the adapter needs at least one expert")
    if bottleneck < 1:
        raise ValueError(f"bottleneck={bottleneck} must be >= 1 (the width of each adapter expert)")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be in 1..num_experts={num_experts}; lower top_k or raise num_experts")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown adapter activation {activation!r}; use one of {sorted(ACTIVATIONS)}")


def _add_adapter_output(module: nn.Module, args: tuple, kwargs: dict, output):
    """Forward hook on a block's ``mlp``: output + adapter(input). A module-level function, so a deep copy
    of the model calls its own adapter."""
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"{type(module).__name__} returned {type(output).__name__}; the FFT-MoE adapter expects "
                        "a feed-forward that returns the hidden-state tensor")
    x = args[0] if args else kwargs["hidden_states"]
    return output + getattr(module, ADAPTER_ATTR)(x)


def attach_moe_adapters(model: nn.Module, *, num_experts: int = 8, bottleneck: int = 16, top_k: int = 2,
                        activation: str = "gelu") -> nn.Module:
    """Add a :class:`MoEAdapter` beside the feed-forward (``mlp``) of every decoder block of an HF causal LM,
    freeze every base parameter, and return the model (changed in place). Adapters take the dtype and
    device of the block's parameters and draw their router and first layers from torch's global RNG."""
    check_adapter_shape(num_experts, bottleneck, top_k, activation)
    if adapters(model, required=False):
        raise ValueError("the model already has FFT-MoE adapters; attach them to a fresh base model")
    model.requires_grad_(False)
    hidden = int(decoder_of(model).config.hidden_size)
    for i, layer in enumerate(decoder_of(model).layers):
        mlp = getattr(layer, "mlp", None)
        if mlp is None:
            raise ValueError(f"decoder layer {i} ({type(layer).__name__}) has no `mlp` feed-forward to adapt")
        ref = next(mlp.parameters())
        mlp.add_module(ADAPTER_ATTR, MoEAdapter(hidden, num_experts, bottleneck, top_k, activation,
                                                dtype=ref.dtype, device=ref.device))
        mlp.register_forward_hook(_add_adapter_output, with_kwargs=True)
    return model


def adapters(model: nn.Module, *, required: bool = True) -> list[MoEAdapter]:
    """The model's adapters in decoder order (an error if it has none and ``required``)."""
    found = [m for m in model.modules() if isinstance(m, MoEAdapter)]
    if required and not found:
        raise ValueError("the model has no FFT-MoE adapters; call attach_moe_adapters(model, ...) first")
    return found


def set_adapter_top_k(model: nn.Module, k: int) -> None:
    """Route every token to ``k`` adapter experts in every block (a client's K_n); shapes are unchanged."""
    for adapter in adapters(model):
        adapter.top_k = k


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (experts and routers): what a client trains."""
    return [p for a in adapters(model) for p in a.parameters()]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of every adapter tensor, keyed by its name in the model (the same on every client)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".{ADAPTER_ATTR}." in n}


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`adapter_state_dict`) into the model's adapters; keys must match exactly."""
    params = {n: p for n, p in model.named_parameters() if f".{ADAPTER_ATTR}." in n}
    if set(state) != set(params):
        raise KeyError(f"adapter state does not match the model: missing {sorted(set(params) - set(state))[:3]}, "
                       f"unexpected {sorted(set(state) - set(params))[:3]}")
    with torch.no_grad():
        for n, p in params.items():
            if state[n].shape != p.shape:
                raise ValueError(f"{n}: state has shape {tuple(state[n].shape)}, the model {tuple(p.shape)}; "
                                 "build the model with the same num_experts and bottleneck")
            p.copy_(state[n])


def is_router_key(name: str) -> bool:
    """Whether an adapter state key is a router W_R (else an expert tensor)."""
    return ROUTER_KEY in name


def pop_routing(model: nn.Module, attention_mask: torch.Tensor | None = None
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every adapter's routing of the last forward pass, ``[(P [N, M], T_K [N, K])]`` per block over the
    non-padding tokens (``attention_mask`` [B, T] as passed to the model); clears what was kept."""
    out = []
    for a in adapters(model):
        if a.last_routing is None:
            raise RuntimeError("no routing recorded: run a forward pass of the adapted model first")
        probs, idx = a.last_routing
        a.last_routing = None
        if attention_mask is not None and attention_mask.shape == probs.shape[:-1]:
            keep = attention_mask.bool()
            probs, idx = probs[keep], idx[keep]
        out.append((probs.reshape(-1, probs.shape[-1]), idx.reshape(-1, idx.shape[-1])))
    return out
