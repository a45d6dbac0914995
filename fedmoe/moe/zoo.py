"""The tiny-model zoo: small MoE causal LMs that the kit pretrains offline on its own world corpus.

A zoo model is a real transformers model (Mixtral, OLMoE or Qwen2-MoE class) with a byte-level BPE
tokenizer trained locally on the corpus of :mod:`fedmoe.data.offline`. Pretraining is deterministic
from the seed and runs with the load-balancing auxiliary loss. The result is saved in the Hugging Face
format under a cache directory keyed by a hash of everything that determines it, and reloaded with
``from_pretrained`` on every later call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from fedmoe.data.offline import DOMAINS, corpus_documents, pretraining_corpus
from fedmoe.data.records import PROMPT_TEMPLATE, PROMPT_TEMPLATE_WITH_CONTEXT
from fedmoe.moe.families import tiny_config
from fedmoe.moe.layers import moe_layers
from fedmoe.moe.routing import record_routing

# Bump when the pretraining recipe changes in a way the hashed fields do not capture.
ZOO_VERSION = 2
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|endoftext|>")  # ids 0, 1, 2: tiny_config's pad/bos/eos ids
META_FILE = "fedmoe_zoo.json"

ZOO: dict[str, str] = {"tiny-mixtral": "mixtral", "tiny-olmoe": "olmoe", "tiny-qwen2-moe": "qwen2_moe"}


@dataclass(frozen=True)
class ZooScale:
    """Everything that sizes one zoo model: architecture, corpus and pretraining schedule."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_experts: int
    top_k: int
    num_heads: int
    n_docs: int  # pretraining corpus documents
    n_entities: int  # entities per domain of the world
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup_steps: int
    weight_decay: float = 0.01
    router_aux_loss_coef: float = 0.01

    def model_kwargs(self) -> dict:
        """The :func:`tiny_config` arguments of this scale."""
        return dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                    intermediate_size=self.intermediate_size, num_layers=self.num_layers,
                    num_experts=self.num_experts, top_k=self.top_k, num_heads=self.num_heads,
                    max_position_embeddings=max(512, self.seq_len))


SCALES: dict[str, ZooScale] = {
    # seconds on CPU: for tests; learns the corpus' surface statistics only
    "smoke": ZooScale(vocab_size=320, hidden_size=32, intermediate_size=32, num_layers=2, num_experts=4, top_k=2,
                      num_heads=2, n_docs=600, n_entities=24, steps=30, batch_size=8, seq_len=64, lr=3e-3,
                      warmup_steps=5),
    # under a CPU minute: half the width and layers of "default" on a fifth of its corpus, short rows and twice its
    # lr; knows most of the world's facts (not its arithmetic), so the quickstart learns visibly at classroom scale
    "classroom": ZooScale(vocab_size=1024, hidden_size=64, intermediate_size=64, num_layers=2, num_experts=4,
                          top_k=2, num_heads=2, n_docs=4000, n_entities=24, steps=600, batch_size=32, seq_len=64,
                          lr=6e-3, warmup_steps=20),
    # about 10 CPU seconds: 8 experts trained long enough that removing a domain's own top experts hurts that
    # domain more than removing others' (functional ratio about 2-4 at seeds 0-2); the learn notebooks' model
    "learn": ZooScale(vocab_size=512, hidden_size=64, intermediate_size=32, num_layers=2, num_experts=8, top_k=2,
                      num_heads=4, n_docs=2000, n_entities=24, steps=200, batch_size=16, seq_len=64, lr=3e-3,
                      warmup_steps=20),
    # a few CPU minutes: memorises the world's facts; the base of the default experiments
    "default": ZooScale(vocab_size=1024, hidden_size=128, intermediate_size=128, num_layers=4, num_experts=8,
                        top_k=2, num_heads=4, n_docs=20000, n_entities=24, steps=600, batch_size=32, seq_len=128,
                        lr=3e-3, warmup_steps=50),
    # "default" routing each token to 4 of 8 experts: room for FLAME's top-k ladder {4, 2, 1}
    "default-top4": ZooScale(vocab_size=1024, hidden_size=128, intermediate_size=128, num_layers=4, num_experts=8,
                             top_k=4, num_heads=4, n_docs=20000, n_entities=24, steps=600, batch_size=32,
                             seq_len=128, lr=3e-3, warmup_steps=50),
    # "default" cut into 32 finer experts per layer (same expert parameters and active width: 32 x 32 wide, top-8,
    # vs 8 x 128, top-2): memory budgets computed on a paper-scale model (LLaMA-MoE-3.5B: 512 experts) become
    # expert counts here without the 8-expert model's rounding (FLUX; see fedmoe.studies.flux.budget_resolution)
    "default-e32": ZooScale(vocab_size=1024, hidden_size=128, intermediate_size=32, num_layers=4, num_experts=32,
                            top_k=8, num_heads=4, n_docs=20000, n_entities=24, steps=600, batch_size=32,
                            seq_len=128, lr=3e-3, warmup_steps=50),
}


def default_cache_dir() -> Path:
    """``$FEDMOE_CACHE`` if set, else ``~/.cache/fedmoe/zoo``."""
    return Path(os.environ.get("FEDMOE_CACHE") or Path.home() / ".cache" / "fedmoe" / "zoo").expanduser()


def _resolve(name: str, scale: str | ZooScale) -> tuple[str, ZooScale]:
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; choose one of {sorted(ZOO)}")
    if isinstance(scale, ZooScale):
        return ZOO[name], scale
    if scale not in SCALES:
        raise ValueError(f"unknown zoo scale {scale!r}; choose one of {sorted(SCALES)} or pass a ZooScale")
    return ZOO[name], SCALES[scale]


def cache_key(name: str, scale: str | ZooScale = "default", seed: int = 0) -> str:
    """Hash of (family, model config, corpus parameters, training parameters, seed): the cache directory name."""
    family, spec = _resolve(name, scale)
    blob = json.dumps({"version": ZOO_VERSION, "family": family, "scale": dataclasses.asdict(spec), "seed": seed},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (plus the prompt templates), pad/eos set.

    Byte-level, so any string round-trips (up to the one leading space the pre-tokenizer adds); special
    tokens take ids 0 (pad), 1 (bos), 2 (eos).
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is below the 256 bytes + {len(SPECIAL_TOKENS)} special tokens")
    tok = Tokenizer(models.BPE())
    # A prefix space makes a text's first word the same token as that word mid-sentence: an answer
    # tokenised on its own ("Quenbar" -> " Quenbar") then reuses what pretraining learnt about the word.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    templates = [PROMPT_TEMPLATE, PROMPT_TEMPLATE_WITH_CONTEXT] * 50
    tok.train_from_iterator(list(texts) + templates, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=SPECIAL_TOKENS[0], bos_token=SPECIAL_TOKENS[1],
                                   eos_token=SPECIAL_TOKENS[2], clean_up_tokenization_spaces=False)


def _pack(tokenizer: PreTrainedTokenizerFast, texts: list[str], seq_len: int) -> torch.Tensor:
    """Concatenate the documents (each followed by eos) and cut the stream into rows of ``seq_len`` tokens."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    stream = list(itertools.chain.from_iterable(row + [tokenizer.eos_token_id] for row in ids))
    rows = len(stream) // seq_len
    if rows == 0:
        raise ValueError(f"corpus of {len(stream)} tokens is shorter than one row of seq_len={seq_len}")
    return torch.tensor(stream[: rows * seq_len]).view(rows, seq_len)


def pretrain(name: str = "tiny-mixtral", scale: str | ZooScale = "default", seed: int = 0, *,
             progress: bool = True) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, dict]:
    """Pretrain a zoo model from scratch (no caching): ``(model, tokenizer, info)``.

    Deterministic for a seed: the corpus, tokenizer, init and batch order all derive from it, and it always
    runs on one torch thread, whatever the caller set (with two threads the weights differ in the last bits,
    and a notebook that pretrained on the default thread count got another model than the script). The loss is
    next-token cross-entropy plus the family's load-balancing auxiliary loss. ``info`` holds the wall
    seconds and the loss curve.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reduction order, hence the weights, depends on the thread count
    try:
        return _pretrain(name, scale, seed, progress)
    finally:
        torch.set_num_threads(threads)


def _pretrain(name: str, scale: str | ZooScale, seed: int, progress: bool):
    family, spec = _resolve(name, scale)
    start = time.perf_counter()
    texts = pretraining_corpus(seed, spec.n_docs, n_entities=spec.n_entities)
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    data = _pack(tokenizer, texts, spec.seq_len)
    torch.manual_seed(seed)
    # Saved with output_router_logits off, so a plain forward's loss is the LM loss; pretraining asks for it.
    config = tiny_config(family, **spec.model_kwargs(), output_router_logits=False,
                         router_aux_loss_coef=spec.router_aux_loss_coef)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        frac = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    losses = []
    bar = tqdm(range(spec.steps), desc=f"pretrain {name}/{scale if isinstance(scale, str) else 'custom'}",
               disable=not progress)
    for _ in bar:
        if len(order) < spec.batch_size:  # a new epoch over the packed rows, in a seeded order
            order = torch.cat([order, torch.randperm(len(data), generator=gen)])
        idx, order = order[: spec.batch_size], order[spec.batch_size:]
        batch = data[idx]
        out = model(input_ids=batch, labels=batch, output_router_logits=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    info = {"name": name, "family": family, "seed": seed, "scale": dataclasses.asdict(spec),
            "pretrain_seconds": time.perf_counter() - start, "losses": losses, "tokens": spec.steps *
            spec.batch_size * spec.seq_len}
    return model, tokenizer, info


def load_pretrained(name: str = "tiny-mixtral", scale: str | ZooScale = "default", seed: int = 0,
                    cache_dir: str | os.PathLike | None = None, progress: bool = True
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """``(model, tokenizer)`` of a zoo model: reloaded from the cache, or pretrained and cached on first call.

    The cache directory is ``cache_dir`` (default :func:`default_cache_dir`) / ``<name>-<key>`` where the key
    hashes the model, corpus and training parameters and the seed. The save is atomic (temporary directory
    renamed into place), so an interrupted pretraining never leaves a half-written cache entry.
    """
    _resolve(name, scale)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / f"{name}-{cache_key(name, scale, seed)}"
    if not (path / META_FILE).exists():
        model, tokenizer, info = pretrain(name, scale, seed, progress=progress)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}-tmp-"))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / META_FILE).write_text(json.dumps(info, indent=1))
            if path.exists():  # a concurrent writer won: keep its (identical) result
                shutil.rmtree(tmp)
            else:
                tmp.rename(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    return model, tokenizer


def pretrain_info(name: str = "tiny-mixtral", scale: str | ZooScale = "default", seed: int = 0,
                  cache_dir: str | os.PathLike | None = None) -> dict:
    """The info (wall seconds, loss curve) recorded when a cached zoo model was pretrained."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / f"{name}-{cache_key(name, scale, seed)}" / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; call load_pretrained({name!r}, {scale!r}, {seed}) first")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------------
# Functional expert specialisation

def _domain_batches(tokenizer, seed: int, n_docs: int, n_entities: int, seq_len: int) -> dict[str, torch.Tensor]:
    docs = corpus_documents(seed, n_docs, n_entities=n_entities, doc_seed=seed + 7919)  # held-out documents
    return {d: _pack(tokenizer, [t for dom, t in docs if dom == d], seq_len) for d in DOMAINS}


@torch.no_grad()
def _loss(model, rows: torch.Tensor, batch_size: int = 32) -> float:
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = rows[i: i + batch_size]
        total += float(model(input_ids=batch, labels=batch, output_router_logits=False).loss) * len(batch)
        count += len(batch)
    return total / count


def _jsd(p: torch.Tensor, q: torch.Tensor) -> float:
    """Jensen-Shannon divergence (natural log) of two distributions."""
    m = (p + q) / 2

    def kl(a, b):
        mask = a > 0
        return float((a[mask] * (a[mask] / b[mask]).log()).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


@torch.no_grad()
def _routing_by_domain(model, batches: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    freqs = {}
    for domain, rows in batches.items():
        with record_routing(model) as rec:
            for i in range(0, len(rows), 32):
                model(input_ids=rows[i: i + 32])
        freqs[domain] = rec.frequencies().float()  # [L, E], rows sum to top_k
    return freqs


def domain_routing(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, seed: int = 0, *,
                   n_docs: int = 600, n_entities: int = 24, seq_len: int = 128) -> dict[str, torch.Tensor]:
    """{domain: routing frequencies f [L, E] (rows sum to top_k)} on the held-out documents of each domain:
    the distributions whose divergence :func:`specialisation` reports as ``jsd`` (same documents, same rows),
    for plotting which experts each domain uses."""
    return _routing_by_domain(model, _domain_batches(tokenizer, seed, n_docs, n_entities, seq_len))


def _mean_pairwise_jsd(freqs: dict[str, torch.Tensor]) -> float:
    values = []
    for a, b in itertools.combinations(list(freqs), 2):
        for layer in range(freqs[a].shape[0]):
            p, q = freqs[a][layer], freqs[b][layer]
            values.append(_jsd(p / p.sum(), q / q.sum()))
    return sum(values) / len(values)


@torch.no_grad()
def specialisation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, seed: int = 0, *,
                   n_docs: int = 600, n_entities: int = 24, n_remove: int | None = None, seq_len: int = 128) -> dict:
    """Functional and distributional measures of expert specialisation by domain.

    On held-out corpus documents of each domain d: remove (zero the output of) the ``n_remove`` experts per
    layer that d routes to most, and, separately, the ``n_remove`` experts that the *other* domains use most
    (excluding d's own top experts). ``ratio`` = mean loss increase from removing d's own experts / mean
    increase from removing the others'; > 1 means experts specialise functionally. ``jsd`` is the mean
    pairwise Jensen-Shannon divergence of the domains' routing distributions (per layer), ``jsd_random`` the
    same for a randomly initialised model of the same config: routing follows token identity, so only the
    comparison (and the functional ratio) is evidence of specialisation.
    """
    layers = moe_layers(model)
    n_remove = n_remove or layers[0].top_k
    batches = _domain_batches(tokenizer, seed, n_docs, n_entities, seq_len)
    freqs = _routing_by_domain(model, batches)
    per_domain = {}
    for d, rows in batches.items():
        base = _loss(model, rows)
        own = freqs[d].topk(n_remove, dim=1).indices  # [L, n_remove]
        others = torch.stack([freqs[o] for o in batches if o != d]).mean(0)
        others = others.scatter(1, own, float("-inf")).topk(n_remove, dim=1).indices
        increases = {}
        for kind, experts in (("own", own), ("other", others)):
            saved = [layer.down_proj.data.clone() for layer in layers]
            for layer, chosen in zip(layers, experts, strict=True):
                layer.down_proj.data[layer.expert_map[chosen]] = 0
            increases[kind] = _loss(model, rows) - base
            for layer, w in zip(layers, saved, strict=True):
                layer.down_proj.data.copy_(w)
        per_domain[d] = {"loss": base, "increase_own": increases["own"], "increase_other": increases["other"]}
    own = sum(v["increase_own"] for v in per_domain.values()) / len(per_domain)
    other = sum(v["increase_other"] for v in per_domain.values()) / len(per_domain)
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    random_model = AutoModelForCausalLM.from_config(model.config).eval()
    torch.random.set_rng_state(rng_state)
    return {
        "ratio": own / other if other > 0 else float("inf"),
        "increase_own": own,
        "increase_other": other,
        "jsd": _mean_pairwise_jsd(freqs),
        "jsd_random": _mean_pairwise_jsd(_routing_by_domain(random_model, batches)),
        "n_remove": n_remove,
        "per_domain": per_domain,
    }
