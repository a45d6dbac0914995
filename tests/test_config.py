"""The config tree: scale blocks, precedence, validation, data_seed and every shipped config applying."""

from pathlib import Path

import pytest
import yaml

from fedmoe.config import SCALE_PRESETS, SCALES, ConfigError, RunConfig, apply_overrides, load_config
from fedmoe.experiment import check_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "reproduce" / "configs").glob("*.yaml"))


def test_precedence_defaults_file_block_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: flame\nfed:\n  lr: 0.5\nscales:\n  smoke:\n    fed: {rounds: 3, num_clients: 4}\n")
    cfg = load_config(path, ["fed.clients_per_round=2", "method_args.rank=4"], scale="smoke")
    assert cfg.method == "flame" and cfg.fed.lr == 0.5  # file top level over defaults
    assert cfg.fed.rounds == 3 and cfg.fed.num_clients == 4  # the scale block
    assert cfg.fed.clients_per_round == 2 and cfg.method_args == {"rank": 4}  # overrides win
    assert cfg.fed.batch_size == 8 and cfg.model.scale == "default"  # a block replaces the generic preset
    # no block for `default`: the generic (empty) preset applies and the file's values stand
    assert load_config(path).fed.rounds == 10 and load_config(path).fed.lr == 0.5


def test_file_value_a_scale_would_replace_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("fed:\n  rounds: 7\n")
    assert load_config(path).fed.rounds == 7
    with pytest.raises(ConfigError, match=r"fed.rounds=7 would be replaced by the generic smoke preset"):
        load_config(path, scale="smoke")
    assert load_config(path, {"fed.rounds": 7}, scale="smoke").fed.rounds == 7  # as an override it applies
    path.write_text("fed:\n  rounds: 7\nscales:\n  paper:\n    fed: {rounds: 30}\n")
    with pytest.raises(ConfigError, match=r"fed.rounds is set at the top level \(7\) and in scales.paper"):
        load_config(path)  # an error at every scale: the file contradicts itself


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_value_written_in_a_shipped_config_applies(path, scale, tmp_path):
    data = yaml.safe_load(path.read_text())
    blocks = data.pop("scales")
    assert set(blocks) == set(SCALES), f"{path.name} needs a block for every scale"
    extra = {"model.path": str(tmp_path)} if scale == "paper" else {}  # paper runs a real checkpoint
    cfg = load_config(path, extra, scale=scale).to_dict()

    def check(node, expect, where):
        for key, value in expect.items():
            if isinstance(value, dict):
                check(node[key], value, f"{where}{key}.")
            else:
                assert node[key] == value, f"{path.name} at scale {scale}: {where}{key}"

    check(cfg, data, "")
    check(cfg, blocks[scale], "")


def test_numbers_in_any_spelling_and_types_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("fed:\n  lr: 1e-4\n  rounds: '3'\ndata:\n  alpha: .5\n")  # YAML reads 1e-4 as a string
    cfg = check_config(load_config(path, ["fed.batch_size=1E1", "method_args.alpha=2e1"]))
    assert cfg.fed.lr == 1e-4 and cfg.fed.rounds == 3 and cfg.data.alpha == 0.5
    assert cfg.fed.batch_size == 10 and cfg.method_args["alpha"] == 20.0
    assert isinstance(cfg.fed.batch_size, int)
    with pytest.raises(ConfigError, match=r"fed.rounds=2.5 is invalid: expected an integer"):
        load_config(None, ["fed.rounds=2.5"])
    with pytest.raises(ConfigError, match=r"model.path=3 is invalid: expected a string or null"):
        load_config(None, ["model.path=3"])


def test_unknown_key_names_valid_keys():
    with pytest.raises(ConfigError, match="fed.roundz.*rounds"):
        apply_overrides(RunConfig(), {"fed.roundz": 3})


def test_bad_override_syntax_and_scale():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["fed.rounds"])
    with pytest.raises(ConfigError, match="smoke"):
        load_config(None, scale="huge")


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="reproduce/configs"):
        load_config(tmp_path / "nope.yaml")


def test_digest_changes_with_content():
    assert RunConfig().digest() == RunConfig().digest()
    assert apply_overrides(RunConfig(), {"seed": 1}).digest() != RunConfig().digest()
    assert apply_overrides(RunConfig(), {"data_seed": 1}).digest() != RunConfig().digest()


def test_generic_presets_are_valid():
    for scale, preset in SCALE_PRESETS.items():
        extra = {"model.path": "."} if scale == "paper" else {}
        cfg = load_config(None, extra, scale=scale)
        for key, value in preset.items():
            section, name = key.split(".")
            assert getattr(getattr(cfg, section), name) == value


def test_seed_varies_the_run_and_data_seed_the_world():
    import torch

    from fedmoe.data.task_data import load_task_data
    from fedmoe.fl.federation import Federation, sample_clients
    from fedmoe.moe.zoo import cache_key

    cfgs = [load_config(None, {"seed": s, "data_seed": 0}, scale="smoke") for s in (0, 1)]
    feds = [Federation.from_config(cfg) for cfg in cfgs]
    assert feds[0].test_set == feds[1].test_set and feds[0].train_parts == feds[1].train_parts
    assert [d.name for d in feds[0].devices] == [d.name for d in feds[1].devices]
    assert all(torch.equal(a, b) for a, b in zip(feds[0].base_model().parameters(), feds[1].base_model().parameters(),
                                                 strict=True))
    assert len({cache_key(c.model.name, c.model.scale, c.data_seed) for c in cfgs}) == 1
    sampled = [[sample_clients(c.seed, r, c.fed.num_clients, c.fed.clients_per_round) for r in range(1, 6)]
               for c in cfgs]
    assert sampled[0] != sampled[1]  # the run seed samples clients ...
    assert feds[0].train_config(0, 1).seed != feds[1].train_config(0, 1).seed  # ... and orders batches
    other = load_config(None, {"data_seed": 1}, scale="smoke")
    assert load_task_data(other.data, seed=other.data_seed)[1] != feds[0].test_set  # data_seed moves the world


def test_a_neutral_addition_stays_out_of_a_runs_identity_only_at_its_neutral_default(tmp_path):
    """Adding ``fed.sim_time_budget`` renamed no existing run: at ``None`` it is neither written nor hashed;
    set, it is both."""
    from fedmoe.config import from_dict, save_config

    plain = load_config(None, {})
    budget = load_config(None, {"fed.sim_time_budget": 100})
    assert "sim_time_budget" not in plain.identity()["fed"] and "sim_time_budget" in plain.to_dict()["fed"]
    assert budget.identity()["fed"]["sim_time_budget"] == 100 and budget.digest() != plain.digest()
    save_config(plain, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "sim_time_budget" not in text
    assert from_dict(yaml.safe_load(text)).digest() == plain.digest()


def test_the_data_fields_for_published_splits_rename_no_existing_run(tmp_path):
    """``data.test_source`` and ``data.kind`` at ``None`` (the 80/20 split, the kind inferred) are neither written
    nor hashed; set, they make another run."""
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "What is 2 + 2?", "answer": "4 #### 4"}\n')
    plain = load_config(None, {"data.source": str(path)})
    assert not {"test_source", "kind"} & set(plain.identity()["data"])
    kind = load_config(None, {"data.source": str(path), "data.kind": "gsm8k"})
    assert kind.identity()["data"]["kind"] == "gsm8k" and kind.digest() != plain.digest()
