"""Paper-scale client steps on one CUDA GPU in bf16: throughput, MFU, peak memory, the cost model's error, kit overhead.

Builds each paper architecture from its published config (:mod:`fedmoe.fl.paper_configs`) with random weights
directly on the GPU in bfloat16 (no hub is needed), puts it under the run's federation (synthetic examples
that fill ``--seq`` tokens; the smoke tokenizer, whose ids all lie inside every paper vocabulary), and for each
method runs client updates exactly as the in-process engine does (``get_method(name).client(fed, args)``,
``update(task)``). FLAME runs one client per tier so that k_i = top-k, top-k/2, ... (8/4/2/1 on OLMoE).
Printed per architecture and method, one ``key value`` line each (``<arch>_<method>_<key>``):

- ``tokens_per_s``: non-padding tokens of the update / its wall seconds (after one warm-up update);
- ``mfu``: the update's priced training FLOPs (``train_flops``: tokens x ``fedmoe.fl.cost.token_flops(...).train``
  on the architecture, at the method's top-k with its LoRA) / seconds / the GPU's dense bf16 peak (``--peak-tflops``,
  default from the GPU's name);
- ``peak_memory_gib`` (the update's own peak: rise over what was allocated before it, plus its model),
  ``memory_ratio`` (measured / the cost model's ``memory_bytes``), ``time_ratio`` (measured seconds / the cost
  model's compute seconds on this GPU at the fleet's default MFU);
- ``kit_step_throughput_ratio`` (FedIT and FLAME): kit tokens/s / a plain PyTorch + PEFT loop's on the same
  model, batch and steps (:mod:`fedmoe.bench`), median over repetitions.

    python reproduce/bench_gpu.py                          # every architecture and method; needs CUDA
    python reproduce/bench_gpu.py --arch olmoe-1b-7b --batch 8 --seq 1024
    python reproduce/bench_gpu.py --dry-run                # the whole path on a tiny model, on the CPU

Without CUDA (and without ``--dry-run``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import sys

import torch

from fedmoe.bench import kit_update, plain_lora_model, plain_steps
from fedmoe.config import load_config
from fedmoe.data.records import Example
from fedmoe.device import model_bytes, place_model
from fedmoe.fl.cost import ClientWork, client_time
from fedmoe.fl.devices import DEVICES
from fedmoe.fl.federation import Federation
from fedmoe.methods.base import get_method
from fedmoe.moe.layers import moe_layers, set_top_k

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L20": 119.5, "4090": 165.2}
ARCHS = {"olmoe-1b-7b": {}, "qwen1.5-moe-a2.7b": {}, "deepseek-v2-lite": {},
         "mixtral-8x7b": {"num_hidden_layers": 2}}  # a 2-layer slice of Mixtral-8x7B
# (label, registered method, options); FLAME's clients 0..3 are tiers 0..3.
METHODS = (("fedit", "fedit", {}), ("flame", "flame", {"tiers": [0, 1, 2, 3]}), ("flux", "flux", {}),
           ("fftmoe", "fftmoe", {}))
PLAIN_COMPARED = ("fedit", "flame")


def peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of a GPU named ``name`` (None when unknown: pass --peak-tflops)."""
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def synthetic_examples(n: int, seq: int) -> list[Example]:
    """``n`` examples whose prompts are longer than ``seq`` tokens (the collate function cuts them to ``seq``)."""
    words = "the federated mixture of experts routes every token to its chosen experts and".split()
    return [Example(prompt=" ".join(words[(i + j) % len(words)] for j in range(2 * seq)), answer=str(i))
            for i in range(n)]


def paper_model(arch: str, changes: dict, device: torch.device, dtype: torch.dtype):
    """A random-weight model of the paper architecture ``arch`` (config ``changes`` applied), built on ``device``."""
    import transformers

    from fedmoe.fl.paper_configs import paper_config

    config = paper_config(arch)
    for key, value in changes.items():
        setattr(config, key, value)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.requires_grad_(False)
    return model


def federation(model, args, device: str, dtype: str) -> Federation:
    """The smoke federation with ``model`` as its base and synthetic examples at the bench's batch x seq."""
    cfg = load_config(None, [f"device={device}", f"dtype={dtype}", "fed.num_clients=4", "fed.clients_per_round=4",
                             f"fed.batch_size={args.batch}", f"fed.max_length={args.seq}",
                             f"fed.local_steps={args.steps}", "data.n_train=160"], scale="smoke")
    fed = Federation.from_config(cfg)
    parts = [synthetic_examples(args.batch * args.steps, args.seq) for _ in range(cfg.fed.num_clients)]
    return dataclasses.replace(fed, _base_model=model, train_parts=parts)


def gpu_profile(peak: float):
    """The cost model's device profile of this GPU: an A100 profile with this GPU's peak and memory."""
    props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    memory = props.total_memory if props else DEVICES["a100-80gb"].memory_bytes
    return DEVICES["a100-80gb"].replace(name="this-gpu", bf16_flops=peak * 1e12, memory_bytes=memory)


def bench_method(fed: Federation, label: str, method: str, options: dict, args, peak: float) -> list[str]:
    """Key lines of one method on one architecture (one per FLAME tier)."""
    spec = get_method(method)
    fed.cfg.method, fed.cfg.method_args = method, options
    server = spec.server(fed, options)
    clients = [0, 1, 2, 3] if label == "flame" else [0]
    tasks = server.plan(1, clients)
    del server
    _free()
    client = spec.client(fed, options)
    profile, lines = gpu_profile(peak), []
    for task in tasks:
        top_k = task.plan.get("top_k") if isinstance(task.plan, dict) else None
        name = f"{args.tag}_{label}" + (f"_k{top_k}" if label == "flame" else "")
        kit_update(client, task)  # warm-up
        runs = [kit_update(client, task) for _ in range(args.reps)]
        timed = [t for t, _ in runs]
        update = runs[-1][1]
        seconds = statistics.median(t.seconds for t in timed)
        tokens = timed[-1].tokens
        work = ClientWork(**update.work)
        predicted = client_time(work, profile)
        out = {"tokens_per_s": tokens / seconds, "mfu": work.train_flops / seconds / (peak * 1e12)}
        if timed[-1].peak_memory is not None:
            own = timed[-1].peak_memory - timed[-1].start_memory + _model_bytes(client)
            out |= {"peak_memory_gib": own / 2**30, "memory_ratio": own / work.memory_bytes}
        out["time_ratio"] = seconds / (predicted.compute + predicted.host_device)
        if label in PLAIN_COMPARED:
            out["kit_step_throughput_ratio"] = _plain_ratio(fed, client, task, top_k, timed, args)
        lines += [f"{name}_{k} {v:.4f}" for k, v in out.items()]
    del client
    _free()
    return lines


def _plain_ratio(fed, client, task, top_k, timed, args) -> float:
    """Median kit tokens/s over the plain loop's, repetition by repetition (the plain model is built after the
    kit's runs so only one trainable copy is on the GPU at a time)."""
    plain = plain_lora_model(fed.base_model(), client.args.rank, client.args.alpha, client.args.attention)
    if top_k is not None:
        set_top_k(plain, top_k)
    cfg = fed.train_config(task.client_id, 1)
    examples = fed.client_data(task.client_id)
    plain_steps(plain, fed.tokenizer, examples, cfg)  # warm-up
    ratios = [k.tokens_per_second / plain_steps(plain, fed.tokenizer, examples, cfg).tokens_per_second
              for k in timed]
    del plain
    _free()
    return statistics.median(ratios)


def _model_bytes(client) -> int:
    """Bytes of the client's model (0 for a client half that keeps no ``model``)."""
    model = getattr(client, "model", None)
    return model_bytes(model) if isinstance(model, torch.nn.Module) else 0


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or its CPU dry run) and print the key lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=sorted(ARCHS), help="default: all")
    parser.add_argument("--method", action="append", choices=[m[0] for m in METHODS], help="default: all")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per client update")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: by GPU name)")
    parser.add_argument("--dry-run", action="store_true", help="a tiny model on the CPU in float32: the whole path")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu: CUDA is not available on this machine; nothing to measure (run it on a GPU machine, "
              "or --dry-run to exercise the path on the CPU)")
        return 0
    if args.dry_run:
        device, dtype, peak = "cpu", "float32", args.peak_tflops or 1.0
        archs = {"tiny-olmoe": None}
    else:
        device, dtype = "cuda", "bfloat16"
        name = torch.cuda.get_device_name(0)
        peak = args.peak_tflops or peak_tflops(name)
        if peak is None:
            raise SystemExit(f"unknown dense bf16 peak for GPU {name!r} (fix: --peak-tflops 989 for an H100)")
        print(f"gpu {name!r}, dense bf16 peak {peak:g} TFLOP/s; batch {args.batch} x seq {args.seq}, "
              f"{args.steps} steps per update, {args.reps} repetitions")
        archs = {a: ARCHS[a] for a in (args.arch or ARCHS)}
    methods = [m for m in METHODS if not args.method or m[0] in args.method]
    for arch, changes in archs.items():
        if changes is None:  # the dry run: a tiny random OLMoE-family model
            import transformers

            from fedmoe.moe.families import tiny_config

            model = transformers.AutoModelForCausalLM.from_config(tiny_config("olmoe", vocab_size=8192, top_k=8))
            model.requires_grad_(False)
        else:
            model = paper_model(arch, changes, torch.device(device), torch.bfloat16)
        place_model(model, torch.device(device), getattr(torch, dtype))
        fed = federation(model, args, device, dtype)
        print(f"{arch}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, "
              f"{len(moe_layers(model))} MoE layers")
        args.tag = arch.replace("-", "_").replace(".", "_")
        for label, method, options in methods:
            try:
                print("\n".join(bench_method(fed, label, method, options, args, peak)), flush=True)
            except Exception as err:  # noqa: BLE001  (one method failing must not hide the others' figures)
                print(f"{args.tag}_{label}_skipped {type(err).__name__}: {str(err).splitlines()[0][:160]}")
                _free()
        del fed, model
        _free()
    return 0


if __name__ == "__main__":
    sys.exit(main())
