"""Load the base MoE model a run names: a zoo model (pretrained offline by the kit) or a local checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging


@contextmanager
def _weight_loading_bars(show: bool) -> Iterator[None]:
    """transformers' "Loading weights" bars on or off within the block (off in grid workers and tests)."""
    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if show else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def load_base_model(model_cfg, *, seed: int = 0, progress: bool = False):
    """Return ``(model, tokenizer)`` for a :class:`fedmoe.config.ModelConfig`.

    ``model_cfg.path`` (a local HF checkpoint directory, e.g. a downloaded OLMoE-1B-7B) wins over the
    zoo name. Supported families are checked so an unsupported model fails here, not mid-run.
    """
    from fedmoe.moe.layers import moe_layers

    with _weight_loading_bars(progress):
        model, tokenizer = _load(model_cfg, seed=seed, progress=progress)
    moe_layers(model)  # raises a clear error for an unsupported family
    return model, tokenizer


def _load(model_cfg, *, seed: int, progress: bool):
    """``(model, tokenizer)`` from ``model_cfg.path`` or the zoo (see :func:`load_base_model`)."""
    if model_cfg.path:
        path = Path(model_cfg.path).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"model path {path} does not exist: point model.path at a local Hugging Face checkpoint "
                "directory (config.json + weights), or unset it to use a zoo model"
            )
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    elif model_cfg.scale == "paper":
        raise ValueError(
            "scale=paper runs a real checkpoint: set model.path to a local Hugging Face MoE checkpoint "
            "(e.g. --set model.path=/data/OLMoE-1B-7B-0924); the offline zoo has smoke and default sizes only"
        )
    else:
        from fedmoe.moe.zoo import load_pretrained

        model, tokenizer = load_pretrained(model_cfg.name, scale=model_cfg.scale, seed=seed, progress=progress)
    return model, tokenizer
