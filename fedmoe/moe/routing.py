"""Record which experts the routers pick, without changing what the model computes.

``with record_routing(model) as rec: model(**batch)`` hooks every router (read-only: the hooks return
``None``) and the decoder (to learn the batch shape and attention mask of each call). Padding tokens
(``attention_mask == 0``) are excluded by default. Hooks are removed when the block exits, also on
errors. Indices are those the router emits over its E experts: for a merged model (see
:func:`fedmoe.moe.surgery.merge_experts`) the original experts, before re-mapping to merged slots.
With gradient checkpointing the recomputed forward is recorded twice; record outside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from fedmoe.moe.families import family_spec
from fedmoe.moe.layers import MoELayer, decoder_of, family_of, moe_layers


class RoutingRecorder:
    """Routing statistics per MoE layer (index among MoE layers) and router expert.

    ``counts`` [L, E]: tokens routed to each expert; ``tokens`` [L]: tokens seen per layer (padding
    excluded); ``sequences``: sequences seen (the batch index of recorded positions runs over all calls).
    """

    def __init__(
        self, layers: list[MoELayer], score: str, *, positions: bool, probs: bool, exclude_padding: bool
    ) -> None:
        self.num_layers = len(layers)
        self.num_experts = max(layer.num_router_experts for layer in layers)
        self.score = score
        self.keep_positions = positions
        self.keep_probs = probs
        self.exclude_padding = exclude_padding
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self.counts = torch.zeros(self.num_layers, self.num_experts, dtype=torch.long)
        self.tokens = torch.zeros(self.num_layers, dtype=torch.long)
        self.sequences = 0
        self._positions: dict[tuple[int, int], list[torch.Tensor]] = {}
        self._probs: dict[int, list[torch.Tensor]] = {}
        self._batch: tuple[int, int, torch.Tensor | None] | None = None

    def frequencies(self) -> torch.Tensor:
        """f [L, E]: tokens routed to expert e / all tokens of the layer (each row sums to top_k)."""
        return self.counts.double() / self.tokens.clamp(min=1).double()[:, None]

    def positions(self, layer: int, expert: int) -> torch.Tensor:
        """Long [n, 2]: (sequence index, position) of the tokens routed to ``expert`` in MoE layer ``layer``.

        Requires ``record_routing(..., positions=True)``. The sequence index counts sequences over all
        forward calls of the recording (the b-th sequence of the c-th batch of size B is c*B + b when
        batches are equal); the position is the token's column in the batch (padding columns counted).
        """
        if not self.keep_positions:
            raise RuntimeError("Positions were not recorded; use record_routing(model, positions=True).")
        chunks = self._positions.get((layer, expert), [])
        return torch.cat(chunks) if chunks else torch.zeros(0, 2, dtype=torch.long)

    def probs(self, layer: int) -> torch.Tensor:
        """Router scores [N, E] of the recorded (non-padding) tokens of MoE layer ``layer``, in token order.

        Softmax of the router logits, or sigmoid for families whose router scores that way (DeepSeek-V3).
        Requires ``record_routing(..., probs=True)``.
        """
        if not self.keep_probs:
            raise RuntimeError(
                "Router probabilities were not recorded; use record_routing(model, probs=True)."
            )
        chunks = self._probs.get(layer, [])
        return torch.cat(chunks) if chunks else torch.zeros(0, self.num_experts)

    # -- hooks ------------------------------------------------------------------------------------------
    def _decoder_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        ref = ids if ids is not None else kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask")
        if ref is None or ref.dim() < 2:
            self._batch = None
            return
        mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        self._batch = (int(ref.shape[0]), int(ref.shape[1]), mask)

    def _decoder_post_hook(self, module: nn.Module, args: tuple, output: object) -> None:
        self.sequences += self._batch[0] if self._batch is not None else 0
        self._batch = None

    def _token_layout(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(valid mask [n], sequence index [n], position [n]) of the router's n flattened tokens."""
        if self._batch is not None and self._batch[0] * self._batch[1] == n:
            batch, seq, mask = self._batch
            offset = 0 if mask is None else mask.shape[1] - seq  # generation with a KV cache: newest tokens
            flat = torch.arange(n, device=device)
            valid = torch.ones(n, dtype=torch.bool, device=device)
            if mask is not None and self.exclude_padding:
                valid = mask[:, offset:].reshape(-1).to(device=device, dtype=torch.bool)
            return valid, flat // seq + self.sequences, flat % seq + offset
        # Router called outside a model forward: one sequence, every token valid.
        flat = torch.arange(n, device=device)
        return torch.ones(n, dtype=torch.bool, device=device), torch.full_like(flat, self.sequences), flat

    def _record(self, layer: int, output: tuple) -> None:
        logits, _, index = output
        with torch.no_grad():
            index = index.detach().reshape(index.shape[0], -1)
            valid, seq, pos = self._token_layout(index.shape[0], index.device)
            chosen = index[valid]
            self.counts[layer] += torch.bincount(chosen.reshape(-1).cpu(), minlength=self.num_experts)
            self.tokens[layer] += int(valid.sum())
            if self.keep_positions:
                where = torch.stack([seq[valid], pos[valid]], dim=1).cpu()
                rows = torch.arange(chosen.shape[0]).repeat_interleave(chosen.shape[1])
                experts = chosen.reshape(-1).cpu()
                for e in torch.unique(experts).tolist():
                    hit = torch.unique(rows[experts == e])  # a token counts once even if e is picked twice
                    self._positions.setdefault((layer, e), []).append(where[hit])
            if self.keep_probs:
                scores = logits.detach().float()
                scores = scores.sigmoid() if self.score == "sigmoid" else scores.softmax(dim=-1)
                self._probs.setdefault(layer, []).append(scores[valid].cpu())


@contextmanager
def record_routing(
    model: nn.Module, *, positions: bool = False, probs: bool = False, exclude_padding: bool = True
) -> Iterator[RoutingRecorder]:
    """Context manager: a :class:`RoutingRecorder` filled by every forward pass run inside the block.

    ``positions``: also keep (sequence, position) of the tokens per (layer, expert) (FLUX's D_e);
    ``probs``: also keep router scores per token; ``exclude_padding``: drop tokens whose
    ``attention_mask`` (as passed to the model call) is 0. Outputs are unchanged; hooks are removed on exit.
    """
    layers = moe_layers(model)
    recorder = RoutingRecorder(
        layers,
        family_spec(family_of(model)).router_score,
        positions=positions,
        probs=probs,
        exclude_padding=exclude_padding,
    )
    decoder = decoder_of(model)
    handles = [
        decoder.register_forward_pre_hook(recorder._decoder_pre_hook, with_kwargs=True),
        decoder.register_forward_hook(recorder._decoder_post_hook),
    ]
    try:
        for layer in layers:
            # prepend: run before any re-mapping hook, so indices are the router's own (original experts).
            handles.append(
                layer.gate.register_forward_hook(
                    lambda _m, _a, out, i=layer.index: recorder._record(i, out), prepend=True
                )
            )
        yield recorder
    finally:
        for handle in handles:
            handle.remove()
