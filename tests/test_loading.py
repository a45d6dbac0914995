"""Loading the base model a run names: zoo model, local checkpoint, and the errors for bad input."""

import pytest
import torch

from fedmoe.config import ModelConfig
from fedmoe.moe.loading import load_base_model
from fedmoe.moe.zoo import load_pretrained


def test_local_checkpoint_loads_like_the_zoo_model(tmp_path):
    model, tokenizer = load_pretrained("tiny-mixtral", "smoke", progress=False)
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded, tok = load_base_model(ModelConfig(path=str(tmp_path / "ckpt")))
    ids = torch.tensor([tok("The capital of")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits, atol=1e-6)


def test_missing_path_and_paper_scale_without_path_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.path"):
        load_base_model(ModelConfig(path=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="model.path"):
        load_base_model(ModelConfig(scale="paper"))


def test_unsupported_family_is_named(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "dense")
    load_pretrained("tiny-mixtral", "smoke", progress=False)[1].save_pretrained(tmp_path / "dense")
    with pytest.raises(Exception, match="mixtral"):
        load_base_model(ModelConfig(path=str(tmp_path / "dense")))
