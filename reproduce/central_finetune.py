"""Held-out scores of a zoo model before and after central fine-tuning on the offline benchmark suites.

The "gsm" suite is the headline check that pretraining plus fine-tuning teaches something measurable:
exact match on held-out entities/operand pairs (whose facts only the pretraining corpus holds) should
climb from near zero to well above half.

    python reproduce/central_finetune.py --name tiny-mixtral --scale default --suites gsm
"""

from __future__ import annotations

import argparse
import json
import time

from fedmoe.data.offline import SUITES, make_benchmark
from fedmoe.eval.evaluate import evaluate
from fedmoe.moe.zoo import load_pretrained
from fedmoe.train import TrainConfig, finetune


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, fine-tune one fresh copy of the model per suite, print and return the scores."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="tiny-mixtral")
    ap.add_argument("--scale", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--suites", default="gsm", help=f"comma-separated subset of {SUITES}")
    ap.add_argument("--n-train", type=int, default=2400)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--json", default=None, help="also write the scores to this JSON file")
    args = ap.parse_args(argv)
    results = {}
    for suite in args.suites.split(","):
        model, tokenizer = load_pretrained(args.name, args.scale, args.seed, cache_dir=args.cache_dir)
        train, test = make_benchmark(suite, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
        before = evaluate(model, tokenizer, test, batch_size=64, progress=False)
        cfg = TrainConfig(lr=args.lr, batch_size=args.batch_size, steps=args.steps, warmup_steps=20,
                          schedule="cosine", seed=args.seed)
        start = time.perf_counter()
        stats = finetune(model, tokenizer, train, cfg, progress=False)
        seconds = time.perf_counter() - start
        after = evaluate(model, tokenizer, test, batch_size=64, progress=False)
        metric = next(k for k in ("exact_match", "rouge_l", "mc_accuracy") if k in after)
        results[suite] = {"metric": metric, "before": before["score"], "after": after["score"],
                          "finetune_seconds": seconds, "final_loss": stats.losses[-1],
                          "per_domain_before": before["per_domain"], "per_domain_after": after["per_domain"],
                          "examples": [(ex.prompt.splitlines()[1], ex.answer, p)
                                       for ex, p in list(zip(test, after["predictions"], strict=True))[:4]]}
        print(f"[{suite}] {metric}: before {before['score']:.3f} -> after {after['score']:.3f} "
              f"({args.steps} steps, {seconds:.0f} s, final loss {stats.losses[-1]:.3f})")
        for domain in after["per_domain"]:
            print(f"    {domain:<11} {before['per_domain'][domain]:.3f} -> {after['per_domain'][domain]:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
