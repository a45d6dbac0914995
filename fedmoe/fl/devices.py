"""Device profiles grounded in published hardware specs, and fleets that assign them to clients.

A :class:`DeviceProfile` holds what the cost model (:mod:`fedmoe.fl.cost`) needs to turn work into
seconds: accelerator memory, dense bf16 tensor throughput, host<->device bandwidth, network up/down
and the fraction of peak throughput training actually reaches (``mfu``). Hardware numbers are
spec-sheet values (sources next to each profile); network numbers and host RAM are documented
*assumptions* and, like ``mfu``, can be overridden with :meth:`DeviceProfile.replace`.

Units: bytes, bytes/s and FLOP/s. GPU memory sizes are binary (a "12 GB" card holds 12 GiB).
Throughputs are dense (no 2:4 sparsity) bf16 tensor-core FLOP/s with fp32 accumulation, the mode
mixed-precision training uses.

A :class:`Fleet` is a named mix of profiles with fractions; :meth:`Fleet.assign` gives each of
``num_clients`` clients a profile, with counts by largest-remainder rounding and the order shuffled
by a seed, so a run's device mix is reproducible.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

GiB = 2**30
GB_S = 1e9  # decimal GB/s, the unit of bandwidth spec sheets
MBIT_S = 1e6 / 8  # bytes/s in one Mbit/s
GBIT_S = 1e9 / 8

# PCIe link rate per direction: 16 GT/s per lane (gen 4) with 128b/130b encoding.
PCIE4_X16 = 16e9 * 16 * (128 / 130) / 8  # = 31.5 GB/s
# What copies actually reach over that link (packet headers, flow control, DMA setup): pinned host->device
# copy-engine memcpy measures 24-26 GB/s on Gen4 x16 GPUs (NVIDIA nvbandwidth, host_to_device_memcpy_ce on
# RTX 4090s, github.com/NVIDIA/nvbandwidth/issues/15; BaM, Qureshi et al. ASPLOS 2023: 25 GB/s measured peak on
# an A100's Gen4 x16). Offloaded experts are priced at this effective rate.
PCIE4_X16_EFFECTIVE = 25 * 1e9

# Host DRAM bandwidth (peak: channels x MT/s x 8 bytes), what a host-side optimizer step streams through.
# Peak, not sustained (STREAM reaches ~70-85%), so offloading baselines are, if anything, favoured.
DDR4_3200_DUAL = 2 * 3200e6 * 8  # desktop, 2 channels: 51.2 GB/s
DDR5_4800_OCTA = 8 * 4800e6 * 8  # one server socket, 8 channels: 307.2 GB/s
DDR4_3200_OCTA = 8 * 3200e6 * 8  # one server socket (e.g. DGX A100's EPYC), 8 channels: 204.8 GB/s

DEFAULT_MFU = 0.4
"""Fraction of peak bf16 throughput reached when training transformers. 0.3-0.5 is what well-tuned
mixed-precision training reports on a single GPU (e.g. PaLM's 46% MFU, Megatron's 40-50%); MoE layers
with small experts and federated clients' small batches tend to sit at the low end, so 0.4."""

# Network assumptions (override per profile or per fleet for your scenario).
HOME_UP = 20 * MBIT_S  # home broadband uplink, 20 Mbit/s
HOME_DOWN = 100 * MBIT_S  # home broadband downlink, 100 Mbit/s
DC_NET = 10 * GBIT_S  # data-centre Ethernet, 10 Gbit/s each way


@dataclass(frozen=True)
class DeviceProfile:
    """One client device: what it can hold, how fast it computes, moves and communicates.

    Attributes:
        name: registry key, e.g. ``"rtx-3060-12gb"``.
        memory_bytes: accelerator memory the model, activations and optimizer state must fit in.
        bf16_flops: dense bf16 tensor throughput, FLOP/s (spec-sheet peak, no sparsity).
        host_device_bandwidth: bytes/s between host RAM and accelerator memory (PCIe link rate, or
            DRAM bandwidth on unified-memory boards), used for experts offloaded to the host.
        net_up: uplink to the server, bytes/s.
        net_down: downlink from the server, bytes/s.
        host_memory_bytes: host RAM available for offloading (same pool as ``memory_bytes`` on
            unified-memory boards).
        mfu: fraction of ``bf16_flops`` actually achieved in training.
        description: human-readable summary and spec sources.
        memory_bandwidth: accelerator DRAM bandwidth, bytes/s (memory-bound work such as dequantising
            4-bit weights; 0 = unknown, an error if such work is priced).
        host_memory_bandwidth: host DRAM bandwidth, bytes/s (a host-side optimizer step; 0 = unknown).
        unified_memory: host and accelerator share one memory pool of ``memory_bytes`` (Jetson): whatever
            is "offloaded" to the host still occupies that pool.
    """

    name: str
    memory_bytes: int
    bf16_flops: float
    host_device_bandwidth: float
    net_up: float
    net_down: float
    host_memory_bytes: int
    mfu: float = DEFAULT_MFU
    description: str = ""
    memory_bandwidth: float = 0.0
    host_memory_bandwidth: float = 0.0
    unified_memory: bool = False

    def __post_init__(self) -> None:
        if self.memory_bandwidth < 0 or self.host_memory_bandwidth < 0:
            raise ValueError(f"DeviceProfile {self.name!r}: memory bandwidths must be >= 0")
        for field_name in ("memory_bytes", "bf16_flops", "host_device_bandwidth", "net_up", "net_down"):
            if not getattr(self, field_name) > 0:
                raise ValueError(f"DeviceProfile {self.name!r}: {field_name} must be > 0, got "
                                 f"{getattr(self, field_name)!r}")
        if self.host_memory_bytes < 0:
            raise ValueError(f"DeviceProfile {self.name!r}: host_memory_bytes must be >= 0")
        if not 0 < self.mfu <= 1:
            raise ValueError(f"DeviceProfile {self.name!r}: mfu must be in (0, 1], got {self.mfu!r}")

    @property
    def effective_flops(self) -> float:
        """FLOP/s achieved in training: ``bf16_flops * mfu``."""
        return self.bf16_flops * self.mfu

    def replace(self, **changes: object) -> DeviceProfile:
        """A copy with some fields overridden (e.g. ``net_up=50 * MBIT_S`` or ``mfu=0.3``)."""
        return replace(self, **changes)


# ---------------------------------------------------------------------------------------------------
# Profiles. bf16 dense tensor FLOP/s = SMs x boost clock x dense FLOP/clk/SM where no sheet lists it.
# memory_bandwidth: spec-sheet DRAM bandwidth (RTX 3060 360 GB/s, 3090 936.2, 4090 1008, L20 864, A100 80GB
# SXM 2039; the Jetsons' shared LPDDR5). Host links of discrete GPUs are priced at PCIE4_X16_EFFECTIVE.
DEVICES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        # NVIDIA RTX 3060 12GB (GA106): 28 SMs, 1.777 GHz boost; GeForce Ampere does 512 dense
        # fp16/bf16 FLOP/clk/SM with fp32 accumulate (GA102 whitepaper: RTX 3090 = 71 TFLOPS at
        # 82 SMs x 1.695 GHz), so 28 x 1.777e9 x 512 = 25.5 TFLOPS. 12 GB GDDR6, PCIe 4.0 x16.
        DeviceProfile(
            name="rtx-3060-12gb",
            memory_bytes=12 * GiB,
            bf16_flops=25.5e12,
            host_device_bandwidth=PCIE4_X16_EFFECTIVE,
            net_up=HOME_UP,
            net_down=HOME_DOWN,
            host_memory_bytes=32 * GiB,
            description="12 GB consumer GPU (GeForce RTX 3060 12GB): 25.5 dense bf16 TFLOP/s, "
            "PCIe 4.0 x16; home broadband; 32 GiB DDR4-3200 dual-channel host RAM (assumed).",
            memory_bandwidth=360 * GB_S,
            host_memory_bandwidth=DDR4_3200_DUAL,
        ),
        # NVIDIA RTX 3090 24GB: NVIDIA Ampere GA102 whitepaper, "Peak BF16 Tensor TFLOPS with FP32
        # Accumulate" 71 (142 with sparsity). 24 GB GDDR6X, PCIe 4.0 x16.
        DeviceProfile(
            name="rtx-3090-24gb",
            memory_bytes=24 * GiB,
            bf16_flops=71e12,
            host_device_bandwidth=PCIE4_X16_EFFECTIVE,
            net_up=HOME_UP,
            net_down=HOME_DOWN,
            host_memory_bytes=64 * GiB,
            description="24 GB consumer GPU (GeForce RTX 3090): 71 dense bf16 TFLOP/s, PCIe 4.0 x16; "
            "home broadband; 64 GiB DDR4-3200 dual-channel host RAM (assumed).",
            memory_bandwidth=936.2 * GB_S,
            host_memory_bandwidth=DDR4_3200_DUAL,
        ),
        # NVIDIA RTX 4090 24GB: NVIDIA Ada Lovelace whitepaper, "Peak BF16 Tensor TFLOPS with FP32
        # Accumulate" 165.2 (330.4 with sparsity). 24 GB GDDR6X, PCIe 4.0 x16.
        DeviceProfile(
            name="rtx-4090-24gb",
            memory_bytes=24 * GiB,
            bf16_flops=165.2e12,
            host_device_bandwidth=PCIE4_X16_EFFECTIVE,
            net_up=HOME_UP,
            net_down=HOME_DOWN,
            host_memory_bytes=64 * GiB,
            description="24 GB consumer GPU (GeForce RTX 4090): 165.2 dense bf16 TFLOP/s, "
            "PCIe 4.0 x16; home broadband; 64 GiB host RAM (assumed).",
            memory_bandwidth=1008 * GB_S,
            host_memory_bandwidth=DDR4_3200_DUAL,
        ),
        # NVIDIA Jetson Orin NX 16GB: Ampere GPU with 32 tensor cores (8 SMs) at 918 MHz; Orin's
        # tensor cores do 2048 dense fp16/bf16 FLOP/clk/SM (GPU = 1/2 of the sheet's sparse INT8
        # TOPS), so 8 x 0.918e9 x 2048 = 15.0 TFLOPS. 16 GB LPDDR5 at 102.4 GB/s shared by CPU and
        # GPU: "offloading" is a copy within that DRAM, so host_device_bandwidth = DRAM bandwidth.
        DeviceProfile(
            name="jetson-orin-nx-16gb",
            memory_bytes=16 * GiB,
            bf16_flops=15.0e12,
            host_device_bandwidth=102.4 * GB_S,
            net_up=HOME_UP,
            net_down=HOME_DOWN,
            host_memory_bytes=16 * GiB,
            description="Edge board (Jetson Orin NX 16GB): 15.0 dense bf16 TFLOP/s, 16 GiB unified "
            "LPDDR5 at 102.4 GB/s (host and GPU share it); home broadband.",
            memory_bandwidth=102.4 * GB_S,
            host_memory_bandwidth=102.4 * GB_S,
            unified_memory=True,
        ),
        # NVIDIA Jetson AGX Orin 64GB: 64 tensor cores (16 SMs) at 1.3 GHz: 16 x 1.3e9 x 2048 =
        # 42.6 TFLOPS dense fp16/bf16 (= 170 sparse INT8 GPU TOPS / 4). 64 GB LPDDR5 at 204.8 GB/s,
        # unified.
        DeviceProfile(
            name="jetson-agx-orin-64gb",
            memory_bytes=64 * GiB,
            bf16_flops=42.6e12,
            host_device_bandwidth=204.8 * GB_S,
            net_up=HOME_UP,
            net_down=HOME_DOWN,
            host_memory_bytes=64 * GiB,
            description="Edge board (Jetson AGX Orin 64GB): 42.6 dense bf16 TFLOP/s, 64 GiB unified "
            "LPDDR5 at 204.8 GB/s (host and GPU share it); home broadband.",
            memory_bandwidth=204.8 * GB_S,
            host_memory_bandwidth=204.8 * GB_S,
            unified_memory=True,
        ),
        # NVIDIA L20 48GB (AD102, the FLUX paper's GPU): NVIDIA L20 datasheet, BF16 tensor 119.5
        # TFLOPS dense (239 with sparsity). 48 GB GDDR6, PCIe 4.0 x16. Data-centre network.
        DeviceProfile(
            name="l20-48gb",
            memory_bytes=48 * GiB,
            bf16_flops=119.5e12,
            host_device_bandwidth=PCIE4_X16_EFFECTIVE,
            net_up=DC_NET,
            net_down=DC_NET,
            host_memory_bytes=512 * GiB,
            description="Data-centre GPU (NVIDIA L20 48GB): 119.5 dense bf16 TFLOP/s, PCIe 4.0 x16; "
            "10 Gbit/s network; 512 GiB host RAM (assumed).",
            memory_bandwidth=864 * GB_S,
            host_memory_bandwidth=DDR5_4800_OCTA,
        ),
        # NVIDIA A100 80GB SXM: A100 datasheet, BF16 tensor 312 TFLOPS dense (624 with sparsity).
        # 80 GB HBM2e; host link PCIe 4.0 x16.
        DeviceProfile(
            name="a100-80gb",
            memory_bytes=80 * GiB,
            bf16_flops=312e12,
            host_device_bandwidth=PCIE4_X16_EFFECTIVE,
            net_up=DC_NET,
            net_down=DC_NET,
            host_memory_bytes=1024 * GiB,
            description="Data-centre GPU (NVIDIA A100 80GB SXM): 312 dense bf16 TFLOP/s, host link "
            "PCIe 4.0 x16; 10 Gbit/s network; 1 TiB host RAM (assumed).",
            memory_bandwidth=2039 * GB_S,
            host_memory_bandwidth=DDR4_3200_OCTA,
        ),
    )
}


def capped(device: DeviceProfile, gib: int) -> DeviceProfile:
    """``device`` with its accelerator memory capped at ``gib`` GiB (a memory budget enforced on a bigger
    GPU, as resource-constrained clients are emulated on a testbed); named ``"{name}-cap{gib}"``."""
    return device.replace(name=f"{device.name}-cap{gib}", memory_bytes=gib * GiB,
                          description=f"{device.description} Memory capped at {gib} GiB.")


# FLUX's paper setting: L20 48GB GPUs whose memory budgets must have been capped (on a full 48 GB card the
# priced LLaMA-MoE-3.5B leaves FLUX nothing to merge). Caps of 12, 16 and 20 GiB keep, at batch 8 x 128,
# about 29%, 58% and 87% of its 512 routed experts resident under FLUX (so every tier merges) and 8-25%
# under FMD (so FMD offloads the rest to the 512 GiB host); 24 GiB and more would hold every expert.
for _gib in (12, 16, 20):
    _profile = capped(DEVICES["l20-48gb"], _gib)
    DEVICES[_profile.name] = _profile


def get_device(name: str | DeviceProfile) -> DeviceProfile:
    """The profile registered under ``name`` (a profile passes through unchanged)."""
    if isinstance(name, DeviceProfile):
        return name
    try:
        return DEVICES[name]
    except KeyError:
        raise KeyError(f"Unknown device {name!r}. Known devices: {', '.join(sorted(DEVICES))}. "
                       "Build your own with DeviceProfile(...) or get_device(known).replace(...).") from None


@dataclass(frozen=True)
class Fleet:
    """A named mix of device profiles; ``mix`` pairs each profile with the fraction of clients using it."""

    name: str
    mix: tuple[tuple[DeviceProfile, float], ...]

    def __post_init__(self) -> None:
        if not self.mix:
            raise ValueError(f"Fleet {self.name!r} has no devices; give at least one (profile, fraction).")
        fractions = [f for _, f in self.mix]
        if any(not f >= 0 for f in fractions):
            raise ValueError(f"Fleet {self.name!r}: fractions must be >= 0, got {fractions}.")
        if not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
            raise ValueError(f"Fleet {self.name!r}: fractions must sum to 1, they sum to {sum(fractions)!r} "
                             f"({fractions}). Rescale them.")
        names = [p.name for p, _ in self.mix]
        if len(set(names)) != len(names):
            raise ValueError(f"Fleet {self.name!r} lists a device twice: {names}. Merge the fractions.")

    @classmethod
    def of(cls, name: str, fractions: dict[str, float] | dict[DeviceProfile, float]) -> Fleet:
        """Build a fleet from ``{device name or profile: fraction}``."""
        return cls(name, tuple((get_device(d), float(f)) for d, f in fractions.items()))

    @classmethod
    def homogeneous(cls, device: str | DeviceProfile) -> Fleet:
        """A fleet where every client has the same device."""
        profile = get_device(device)
        return cls(profile.name, ((profile, 1.0),))

    def counts(self, num_clients: int) -> list[int]:
        """Clients per device (in ``mix`` order), by largest-remainder rounding of the fractions.

        Each device first gets ``floor(fraction * num_clients)``; the clients left over go one each
        to the devices with the largest remainders (ties: earlier in ``mix`` first).
        """
        if num_clients < 0:
            raise ValueError(f"num_clients must be >= 0, got {num_clients}.")
        # Rounded to 1e-9 so float noise (0.1 * 3 = 0.30000000000000004) cannot move a client.
        quotas = [round(f * num_clients, 9) for _, f in self.mix]
        counts = [math.floor(q) for q in quotas]
        order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
        for i in order[: num_clients - sum(counts)]:
            counts[i] += 1
        return counts

    def assign(self, num_clients: int, seed: int) -> list[DeviceProfile]:
        """One profile per client: :meth:`counts` of each device, order shuffled by ``seed``."""
        devices = [p for (p, _), n in zip(self.mix, self.counts(num_clients), strict=True) for _ in range(n)]
        random.Random(seed).shuffle(devices)
        return devices

    def replace_all(self, **changes: object) -> Fleet:
        """The same mix with every profile overridden (e.g. a different network for all clients)."""
        return Fleet(self.name, tuple((p.replace(**changes), f) for p, f in self.mix))


FLEETS: dict[str, Fleet] = {
    f.name: f
    for f in (
        # A home-lab federation: mostly mid-range GPUs, some small GPUs and edge boards.
        Fleet.of("consumer", {"rtx-3060-12gb": 0.3, "rtx-3090-24gb": 0.5, "jetson-orin-nx-16gb": 0.2}),
        # FLUX's testbed: every client an NVIDIA L20 48GB.
        Fleet.of("datacenter", {"l20-48gb": 1.0}),
        # FLUX's paper setting: L20s with capped memory budgets (see DEVICES above), data-centre network.
        Fleet.of("paper", {"l20-48gb-cap12": 1 / 3, "l20-48gb-cap16": 1 / 3, "l20-48gb-cap20": 1 / 3}),
        # The heterogeneous-rank literature's settings (FLAME): an equal mix and a heavy tail of weak
        # clients.
        Fleet.of("uniform", {"jetson-orin-nx-16gb": 1 / 3, "rtx-3060-12gb": 1 / 3, "rtx-3090-24gb": 1 / 3}),
        Fleet.of("heavy-tail", {"jetson-orin-nx-16gb": 0.6, "rtx-3060-12gb": 0.3, "rtx-3090-24gb": 0.1}),
    )
}


def get_fleet(name: str | Fleet) -> Fleet:
    """The fleet registered under ``name``; a device name gives a homogeneous fleet of that device."""
    if isinstance(name, Fleet):
        return name
    if name in FLEETS:
        return FLEETS[name]
    if name in DEVICES:
        return Fleet.homogeneous(name)
    raise KeyError(f"Unknown fleet {name!r}. Known fleets: {', '.join(sorted(FLEETS))}; any device name "
                   f"({', '.join(sorted(DEVICES))}) also gives a homogeneous fleet; or build Fleet.of(...).")
