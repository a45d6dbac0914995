"""The config tree: presets, YAML, overrides and their error messages."""

import pytest

from fedmoe.config import RunConfig, apply_overrides, load_config


def test_file_then_scale_preset_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: flame\nfed:\n  rounds: 7\n  lr: 0.5\n")
    cfg = load_config(path, ["fed.lr=0.01", "method_args.rank=4"], scale="smoke")
    assert cfg.scale == "smoke" and cfg.model.scale == "smoke" and cfg.method == "flame"
    assert cfg.fed.num_clients == 4 and cfg.fed.rounds == 2  # the smoke preset resizes the file's experiment
    assert cfg.fed.lr == 0.01 and cfg.method_args == {"rank": 4}  # overrides win over everything
    assert load_config(path).fed.rounds == 7  # at the default scale the file's sizes stand


def test_unknown_key_names_valid_keys():
    with pytest.raises(KeyError, match="rounds"):
        apply_overrides(RunConfig(), {"fed.roundz": 3})


def test_bad_override_syntax_and_scale():
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["fed.rounds"])
    with pytest.raises(ValueError, match="smoke"):
        load_config(None, scale="huge")


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="reproduce/configs"):
        load_config(tmp_path / "nope.yaml")


def test_digest_changes_with_content():
    assert RunConfig().digest() == RunConfig().digest()
    assert apply_overrides(RunConfig(), {"seed": 1}).digest() != RunConfig().digest()
