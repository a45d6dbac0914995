"""Real datasets scored on their published test split: ``data.test_source``, ``data.kind``, folders of files, and
the dataset read and checked by ``check_config`` before any model loads."""

import json

import pytest

import fedmoe.moe.loading
from fedmoe import cli
from fedmoe.config import ConfigError, load_config
from fedmoe.data.loaders import DatasetFormatError, load_records
from fedmoe.data.task_data import load_task_data
from fedmoe.engines import run
from fedmoe.experiment import check_config
from fedmoe.results import load_rounds


def gsm8k(path, numbers):
    """A GSM8K file in its published jsonl schema: ``question``, ``answer`` ending in ``#### n``."""
    path.write_text("".join(json.dumps({"question": f"What is {n} + {n}?", "answer": f"{n} + {n} = {2 * n}\n"
                                        f"#### {2 * n}"}) + "\n" for n in numbers))
    return path


def mmlu(folder, subjects, rows, split):
    """MMLU's published layout: one headerless ``<subject>_<split>.csv`` (question,A,B,C,D,answer) per subject."""
    folder.mkdir()
    for subject in subjects:
        (folder / f"{subject}_{split}.csv").write_text("".join(f"{subject} question {i}?,a,b,c,d,{'ABCD'[i % 4]}\n"
                                                            for i in range(rows)))
    return folder


@pytest.fixture
def files(tmp_path):
    return gsm8k(tmp_path / "train.jsonl", range(200)), gsm8k(tmp_path / "test.jsonl", range(1000, 1040))


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything loads a base model."""
    def refuse(*args, **kwargs):
        raise AssertionError("a base model was loaded before the dataset was checked")

    monkeypatch.setattr(fedmoe.moe.loading, "load_base_model", refuse)


def _cfg(train, test, **overrides):
    return load_config(None, {"data.source": str(train), "data.test_source": str(test), **overrides}, scale="smoke")


def test_test_source_is_scored_as_is_and_training_uses_source_alone(files):
    train_file, test_file = files
    train, test = load_task_data(_cfg(train_file, test_file, **{"data.n_test": 40}).data)
    assert test == load_records(test_file)  # every row of the published test file, in its order
    assert len(train) == 160 and set(train) <= set(load_records(train_file))  # n_train of the train file
    capped = load_task_data(_cfg(train_file, test_file).data, seed=1)[1]  # smoke: n_test=32
    assert len(capped) == 32 and set(capped) < set(test)
    assert load_task_data(_cfg(train_file, test_file).data, seed=1)[1] == capped  # seeded
    # without test_source the one file is shuffled and cut 80/20, as before
    legacy_train, legacy_test = load_task_data(load_config(None, {"data.source": str(train_file)},
                                                           scale="smoke").data)
    assert len(legacy_train) == 160 and len(legacy_test) == 32 and not set(legacy_train) & set(legacy_test)


def test_counts_larger_than_the_files_are_errors(files):
    train_file, test_file = files
    with pytest.raises(DatasetFormatError, match=r"data\.test_source=.*test\.jsonl' holds 40 examples, fewer than "
                       r"data\.n_test=41 .*Fix: --set data\.n_test=40"):
        check_config(_cfg(train_file, test_file, **{"data.n_test": 41}))
    with pytest.raises(DatasetFormatError, match=r"data\.source=.*train\.jsonl' holds 200 examples, fewer than "
                       r"data\.n_train=201 .*Fix: --set data\.n_train=200"):
        check_config(_cfg(train_file, test_file, **{"data.n_train": 201}))


def test_mmlu_per_subject_folders_and_kind_from_yaml_and_cli(tmp_path):
    train = mmlu(tmp_path / "val", ["anatomy", "virology"], 100, "val")
    test = mmlu(tmp_path / "test", ["anatomy", "virology"], 20, "test")
    path = tmp_path / "c.yaml"
    path.write_text(f"data:\n  kind: mmlu\n  source: {train}\n  test_source: '{test}/*_test.csv'\n")
    cfg = check_config(load_config(path, ["data.n_test=40"], scale="smoke"))
    assert cfg.data.kind == "mmlu"
    _, scored = load_task_data(cfg.data)
    assert len(scored) == 40 and {ex.domain for ex in scored} == {"anatomy", "virology"}
    assert load_config(path, ["data.kind=null"], scale="smoke").data.kind is None  # --set data.kind=...
    with pytest.raises(ConfigError, match=r"data\.kind='mcq' is invalid: expected a dataset kind, one of "
                       r"\('dolly', 'gsm8k', 'mmlu', 'piqa', 'alpaca'\)"):
        load_config(path, ["data.kind=mcq"], scale="smoke")
    with pytest.raises(DatasetFormatError, match=r"anatomy_val\.csv, line 1: missing field\(s\) 'instruction'"):
        check_config(load_config(path, ["data.kind=dolly", "data.n_test=40"], scale="smoke"))


def test_data_keys_that_cannot_apply_are_errors(files, tmp_path):
    train_file, test_file = files
    for key in ("test_source", "kind"):
        with pytest.raises(ConfigError, match=rf"data\.{key}=.* applies only with data\.source"):
            load_config(None, {f"data.{key}": str(test_file) if key == "test_source" else "gsm8k"}, scale="smoke")
    with pytest.raises(ConfigError, match=r"data\.test_source='.*nope\.jsonl' is invalid: expected an existing"):
        _cfg(train_file, tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match=r"both name .*train\.jsonl: the model would be scored on its own"):
        _cfg(train_file, f"{tmp_path}/*.jsonl")


def test_a_bad_test_file_fails_in_check_config_before_any_model_loads(files, tmp_path, capsys, no_model):
    train_file, test_file = files
    test_file.write_text(test_file.read_text() + json.dumps({"question": "q", "answer": "no number"}) + "\n")
    with pytest.raises(DatasetFormatError, match=r"test\.jsonl, line 41: field 'answer' has no final"):
        check_config(_cfg(train_file, test_file))
    with pytest.raises(DatasetFormatError, match=r"test\.jsonl, line 41"):
        run(_cfg(train_file, test_file), out_dir=tmp_path / "results", progress=False)
    assert not (tmp_path / "results").exists()  # failed before its run folder was made
    argv = ["run", "--scale", "smoke", "--set", f"data.source={train_file}", "--set",
            f"data.test_source={test_file}", "--out", str(tmp_path / "results")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedmoe: error: ") and "\n" not in err and "test.jsonl, line 41" in err, err


def test_too_few_training_rows_for_the_clients(tmp_path, no_model):
    train_file, test_file = gsm8k(tmp_path / "train.jsonl", range(5)), gsm8k(tmp_path / "test.jsonl", range(5))
    cfg = load_config(None, {"data.source": str(train_file), "fed.num_clients": 5}, scale="smoke")
    with pytest.raises(ConfigError, match=r"gives 4 training examples \(80% of its rows; data\.test_source would "
                       r"train on every row\), fewer than fed\.num_clients=5"):
        check_config(cfg)
    check_config(_cfg(train_file, test_file, **{"data.n_train": 5, "data.n_test": 5, "fed.num_clients": 4}))


def test_a_run_scores_every_row_of_the_published_test_file(files, tmp_path):
    train_file, test_file = files
    cfg = _cfg(train_file, test_file, **{"fed.rounds": 1, "data.n_test": 40, "fed.max_length": 48})
    folder = run(cfg, out_dir=tmp_path, progress=False)
    assert [len(r["item_scores"]) for r in load_rounds(folder) if "item_scores" in r] == [40, 40]
