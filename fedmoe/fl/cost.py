"""The cost model: federated work -> simulated seconds on a device profile.

Accuracy comes from real training; time comes from these deterministic formulas over the device
profiles of :mod:`fedmoe.fl.devices`, so time-to-accuracy is reproducible run to run.

Client time (:func:`client_time`), for one client's round on device ``d``::

    compute     = (train_flops + forward_flops) / (d.bf16_flops * d.mfu)
                  + device_memory_traffic / d.memory_bandwidth  (memory-bound work: 4-bit dequantisation)
    host_device = host_device_bytes / d.host_device_bandwidth      (offloaded experts moved each step)
    host        = host_memory_traffic / d.host_memory_bandwidth    (a host-side optimizer step)
    download    = bytes_down / d.net_down
    upload      = bytes_up / d.net_up
    total       = compute + host_device + host + download + upload

No phase overlaps another within a client (a conservative, simple choice). ``forward`` =
``forward_flops / (d.bf16_flops * d.mfu)`` is the forward-only part of ``compute`` (e.g. FLUX's
profiling), reported separately because a method may hide it (below).

Round time (:func:`round_time`) for clients ``i`` sampled in the round, server time ``S`` and an
overlap fraction ``a`` in [0, 1]::

    hidden_i = a * forward_i                    # forward-only work that may run concurrently
    T_i      = total_i - hidden_i               # when client i's upload has arrived
    round    = max( max_i T_i + S,  max_i (T_i - upload_i + hidden_i - download_i) )

The server waits for the slowest upload (or, when a client never answers, for the round's timeout
``W``: ``max_i T_i`` becomes ``max(max_i T_i, W)``), then spends ``S`` aggregating; meanwhile each client runs
its hideable work on its otherwise idle accelerator (FLUX's *stale profiling*: profile the model it
has and use that profile next round). That work starts when its training ends, so it overlaps the
client's own upload, the straggler wait ``max_j T_j - T_i``, the server's ``S`` and the client's next
download (the model it profiles is already local; the next round only needs the profile once its
download is in), priced with this round's ``download_i`` (steady state: the same payload every
round). With ``a = 0`` this is the synchronous ``max_i total_i + S``.

Parameter counts and FLOPs (:func:`matmul_params`, :func:`token_flops`) come from an HF config
alone, so paper-scale architectures are priced without building them; counts are those of
:func:`fedmoe.moe.memory.param_counts`. Per token, ``N`` = parameters used in matrix multiplications:
everything except the routed experts, plus ``min(top_k, experts held)`` routed experts per MoE layer,
minus the input embedding (a lookup), with the LM head (also when tied), plus
``adapter_active_params`` added on top of the base model (LoRA, MoE adapters). With ``L`` layers,
hidden size ``H`` and sequence length ``s``::

    forward  = 2 * N + 2 * L * s * H          # weight matmuls + attention scores (Kaplan et al. 2020)
    backward = 2 * forward                    # all weights train: activation + weight gradients
    backward = forward + 2 * N_train          # only N_train active parameters train (LoRA, some
                                              # experts): activation gradients + their weight gradients
    train    = forward + backward

A client's ``train_flops`` is ``train * tokens`` it trains on; ``forward_flops`` is ``forward * tokens``
of forward-only passes (FLUX profiles with an INT4 model; its arithmetic is priced at the bf16 rate,
a conservative choice since consumer GPUs run INT4 weight-only kernels at bf16 math speed).

:class:`CostModel` bundles a fleet with these options and a ``mode``: ``"trained"`` prices the model
actually trained, ``"projection"`` prices a paper-scale architecture (:mod:`fedmoe.fl.paper_configs`)
doing the same plan (a run's config records which, for results and figure captions).

Unit conventions: FLOPs, bytes, seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from transformers import PretrainedConfig

from fedmoe.fl.devices import DeviceProfile, Fleet, get_fleet
from fedmoe.fl.paper_configs import paper_arch
from fedmoe.moe.memory import as_config, param_counts


class DoesNotFitError(ValueError):
    """A client's work needs more accelerator memory than its device has."""


@dataclass(frozen=True)
class ClientWork:
    """What one client does in one round, in cost-model units (FLOPs and bytes).

    Attributes:
        train_flops: forward + backward FLOPs of local training.
        forward_flops: extra forward-only FLOPs (e.g. FLUX's quantized profiling, zeroth-order probes).
        bytes_down: bytes received from the server.
        bytes_up: bytes sent to the server.
        host_device_bytes: bytes moved between host RAM and accelerator (offloaded experts, per round).
        memory_bytes: peak accelerator memory the work needs.
        host_memory_bytes: host RAM the work needs (offloaded weights and training state).
        host_memory_traffic: host DRAM bytes read and written by host-side work (optimizer steps).
        device_memory_traffic: accelerator DRAM bytes of memory-bound work outside the matmuls
            (dequantising 4-bit weights, re-quantising them after an update).
    """

    train_flops: float = 0.0
    forward_flops: float = 0.0
    bytes_down: float = 0.0
    bytes_up: float = 0.0
    host_device_bytes: float = 0.0
    memory_bytes: float = 0.0
    host_memory_bytes: float = 0.0
    host_memory_traffic: float = 0.0
    device_memory_traffic: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) >= 0:
                raise ValueError(f"ClientWork.{f.name} must be >= 0, got {getattr(self, f.name)!r}.")

    def to_dict(self) -> dict[str, float]:
        """Plain dict (what :class:`fedmoe.fl.contract.ClientUpdate.work` carries)."""
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> ClientWork:
        """Inverse of :meth:`to_dict`; unknown keys are an error (they would be silently unpriced)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown ClientWork fields {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**{k: float(v) for k, v in data.items()})


@dataclass(frozen=True)
class ClientTime:
    """Seconds one client spends in a round, by phase (``forward`` is part of ``compute``)."""

    compute: float
    forward: float
    host_device: float
    download: float
    upload: float
    total: float
    host: float = 0.0


def client_time(work: ClientWork, device: DeviceProfile) -> ClientTime:
    """Seconds ``work`` takes on ``device`` (formulas in the module docstring)."""
    flops_per_s = device.bf16_flops * device.mfu
    compute = (work.train_flops + work.forward_flops) / flops_per_s
    compute += _seconds(work.device_memory_traffic, device.memory_bandwidth, device, "memory_bandwidth")
    host = _seconds(work.host_memory_traffic, device.host_memory_bandwidth, device, "host_memory_bandwidth")
    host_device = work.host_device_bytes / device.host_device_bandwidth
    download = work.bytes_down / device.net_down
    upload = work.bytes_up / device.net_up
    return ClientTime(
        compute=compute,
        forward=work.forward_flops / flops_per_s,
        host_device=host_device,
        download=download,
        upload=upload,
        total=compute + host_device + host + download + upload,
        host=host,
    )


def _seconds(traffic: float, bandwidth: float, device: DeviceProfile, field: str) -> float:
    if not traffic:
        return 0.0
    if bandwidth <= 0:
        raise ValueError(f"{device.name} has no {field}, but the work moves {traffic:.3g} bytes through it; "
                         f"set it with get_device({device.name!r}).replace({field}=...)")
    return traffic / bandwidth


@dataclass(frozen=True)
class RoundTime:
    """Seconds of one round: ``total``; ``client_phase`` = max_i T_i (the last upload arrives);
    ``server`` = server seconds; ``slowest`` = index of the client that arrives last; ``hidden`` =
    seconds saved by the overlap against the synchronous ``max_i total_i + server``."""

    total: float
    client_phase: float
    server: float
    slowest: int
    hidden: float


def round_time(client_times: Sequence[ClientTime], server_seconds: float = 0.0, overlap: float = 0.0,
               wait_seconds: float = 0.0) -> RoundTime:
    """Round seconds: slowest sampled client, then the server; ``overlap`` (in [0, 1]) of each
    client's forward-only work runs concurrently with waiting and aggregation (module docstring).
    ``wait_seconds``: the server waits at least this long before aggregating (the timeout of a round in
    which some client never answered)."""
    if not client_times:
        raise ValueError("round_time needs at least one client's time; a round samples >= 1 client.")
    if server_seconds < 0:
        raise ValueError(f"server_seconds must be >= 0, got {server_seconds!r}.")
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be in [0, 1] (the fraction of forward-only work hidden), got {overlap!r}.")
    arrivals = [t.total - overlap * t.forward for t in client_times]
    slowest = max(range(len(arrivals)), key=arrivals.__getitem__)
    client_phase = max(arrivals[slowest], wait_seconds)
    hidden_ends = [a - t.upload + overlap * t.forward - t.download for a, t in zip(arrivals, client_times, strict=True)]
    total = max(client_phase + server_seconds, max(hidden_ends))
    synchronous = max(max(t.total for t in client_times), wait_seconds) + server_seconds
    return RoundTime(total=total, client_phase=client_phase, server=server_seconds, slowest=slowest,
                     hidden=synchronous - total)


def check_fits(work: ClientWork, device: DeviceProfile, *, what: str = "") -> None:
    """Raise :class:`DoesNotFitError` when ``work.memory_bytes`` exceeds ``device.memory_bytes``, or
    ``work.host_memory_bytes`` exceeds the host RAM (on a unified-memory board: what the accelerator side
    leaves of the shared pool).

    Methods that adapt to the device (FLUX, FLAME, FFT-MoE) size their work to fit first; fixed
    baselines that cannot adapt get this error with the required and available bytes.
    """
    gib = 2**30
    subject = f"{what} needs" if what else "This work needs"
    host = device.memory_bytes - work.memory_bytes if device.unified_memory else device.host_memory_bytes
    if work.host_memory_bytes > host:
        shared = " (unified memory: the accelerator's share is already taken)" if device.unified_memory else ""
        raise DoesNotFitError(
            f"{subject} {work.host_memory_bytes / gib:.2f} GiB of host memory for offloaded weights and training "
            f"state, but {device.name} has {max(host, 0) / gib:.2f} GiB{shared}. Offloading cannot hold this "
            "model's training state here: use a device with more host RAM, a smaller model, or a method that "
            "trains fewer experts (FLUX, FMES)."
        )
    if work.memory_bytes <= device.memory_bytes:
        return
    raise DoesNotFitError(
        f"{subject} {work.memory_bytes / gib:.2f} GiB ({int(work.memory_bytes)} bytes) of accelerator memory, "
        f"but {device.name} has {device.memory_bytes / gib:.2f} GiB ({device.memory_bytes} bytes). "
        "Use a smaller model, quantize it, keep fewer experts (or offload some to host memory), "
        "or use a method that adapts to the device's memory budget."
    )


@dataclass(frozen=True)
class TokenFlops:
    """FLOPs per token (module docstring); ``train`` = ``forward + backward``."""

    forward: float
    backward: float

    @property
    def train(self) -> float:
        """Training FLOPs per token."""
        return self.forward + self.backward


def matmul_params(
    config: PretrainedConfig | dict,
    *,
    top_k: int | None = None,
    experts_per_layer: int | list[int] | None = None,
) -> int:
    """Parameters one token passes through in matrix multiplications.

    Everything but the routed experts, plus ``top_k`` routed experts in each MoE layer (default: the
    config's; capped by the experts a layer holds, ``experts_per_layer`` as in
    :func:`fedmoe.moe.memory.param_counts`), minus the input embedding (a lookup), with the LM head
    (counted even when tied to the embedding: the matmul still happens).
    """
    config = as_config(config)
    counts = param_counts(config, experts_per_layer)
    k = config.num_experts_per_tok if top_k is None else top_k
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k!r}.")
    routed = sum(min(k, slots) for slots in counts.experts_per_layer) * counts.expert
    lm_head = counts.lm_head or int(config.vocab_size) * int(config.hidden_size)
    return counts.total - counts.experts + routed - counts.embeddings - counts.lm_head + lm_head


def token_flops(
    config: PretrainedConfig | dict,
    *,
    seq_len: int,
    top_k: int | None = None,
    experts_per_layer: int | list[int] | None = None,
    adapter_active_params: int = 0,
    trainable_active_params: int | None = None,
) -> TokenFlops:
    """Forward and backward FLOPs per token of ``config`` with ``top_k`` experts per token.

    ``seq_len``: training sequence length (attention-score term). ``adapter_active_params``:
    parameters added on top of the base model that each token passes through (LoRA of its active
    experts, MoE adapters). ``trainable_active_params``: ``None`` when every weight trains; else the
    number of trainable parameters each token passes through (e.g. LoRA, or the tuning experts'
    share: top_k * expert params * fraction of its tokens routed to tuning experts, per MoE layer).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len!r}.")
    if adapter_active_params < 0 or (trainable_active_params is not None and trainable_active_params < 0):
        raise ValueError("adapter_active_params and trainable_active_params must be >= 0.")
    config = as_config(config)
    n = matmul_params(config, top_k=top_k, experts_per_layer=experts_per_layer) + adapter_active_params
    forward = 2.0 * n + 2.0 * int(config.num_hidden_layers) * seq_len * int(config.hidden_size)
    if trainable_active_params is None:
        backward = 2.0 * forward
    else:
        backward = forward + 2.0 * trainable_active_params
    return TokenFlops(forward=forward, backward=backward)


Mode = Literal["trained", "projection"]


@dataclass(frozen=True)
class CostModel:
    """A fleet plus the options that price a run.

    ``mode="trained"`` prices the model actually trained; ``mode="projection"`` prices the
    paper-scale architecture ``arch`` (a :mod:`fedmoe.fl.paper_configs` name or Hub id, or an HF
    config) doing the same plan (tokens, top-k, fraction of experts tuned). ``seed`` fixes which
    client gets which device. A round's time is :func:`round_time` of the clients' times.
    """

    fleet: Fleet
    mode: Mode = "trained"
    arch: str | PretrainedConfig | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("trained", "projection"):
            raise ValueError(f"CostModel mode must be 'trained' or 'projection', got {self.mode!r}.")
        if self.mode == "projection" and self.arch is None:
            raise ValueError("CostModel(mode='projection') needs arch=: a paper_configs name (e.g. "
                             "'olmoe-1b-7b') or an HF config of the architecture to price.")
        if self.mode == "trained" and self.arch is not None:
            raise ValueError("CostModel(mode='trained') prices the trained model; drop arch= or use "
                             "mode='projection'.")
        if isinstance(self.arch, str):
            paper_arch(self.arch)  # fail early on an unknown name

    @classmethod
    def build(cls, fleet: str | Fleet, **options: Any) -> CostModel:
        """A cost model for a fleet given by name (see :func:`fedmoe.fl.devices.get_fleet`) or object."""
        return cls(fleet=get_fleet(fleet), **options)

    def priced_config(self, trained_config: PretrainedConfig) -> PretrainedConfig:
        """The architecture whose FLOPs and bytes are priced: the trained one, or ``arch`` in projection."""
        if self.mode == "trained":
            return trained_config
        if isinstance(self.arch, str):
            return paper_arch(self.arch).build()
        return self.arch

    def devices(self, num_clients: int) -> list[DeviceProfile]:
        """Each client's device profile (deterministic in ``seed``)."""
        return self.fleet.assign(num_clients, self.seed)
