"""Pretrain (or reload from the cache) the default zoo models and report time and expert specialisation.

    python reproduce/pretrain_zoo.py --names tiny-mixtral,tiny-olmoe --scale default

Prints each model's pretraining wall time (as recorded when it was pretrained), its final loss, and the
specialisation measures of :func:`fedmoe.moe.zoo.specialisation`: the functional ratio (loss increase
from removing a domain's own top experts / from removing other domains' top experts) and the routing
Jensen-Shannon divergence between domains, against a randomly initialised model of the same config.
"""

from __future__ import annotations

import argparse
import json

from fedmoe.moe.zoo import load_pretrained, pretrain_info, specialisation


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, load or pretrain each model, print and return its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", default="tiny-mixtral")
    ap.add_argument("--scale", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    report = {}
    for name in args.names.split(","):
        model, tokenizer = load_pretrained(name, args.scale, args.seed, cache_dir=args.cache_dir)
        info = pretrain_info(name, args.scale, args.seed, cache_dir=args.cache_dir)
        spec = specialisation(model, tokenizer, args.seed, n_entities=info["scale"]["n_entities"])
        losses = info["losses"]
        report[name] = {"pretrain_seconds": info["pretrain_seconds"], "final_loss": sum(losses[-20:]) / 20,
                        **{k: v for k, v in spec.items() if k != "per_domain"}}
        print(f"{name}/{args.scale}: pretrained in {info['pretrain_seconds']:.0f} s "
              f"({info['tokens']} tokens), final loss {report[name]['final_loss']:.3f}")
        print(f"  functional specialisation ratio {spec['ratio']:.2f} (loss +{spec['increase_own']:.3f} removing "
              f"a domain's own top-{spec['n_remove']} experts vs +{spec['increase_other']:.3f} removing others')")
        print(f"  routing JSD between domains {spec['jsd']:.3f} (random init of the same config: "
              f"{spec['jsd_random']:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
