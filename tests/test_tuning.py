"""Equal tuning on a validation split: the validation items are carved from the training pool (seeded, disjoint from
training and test items, the test file unread), new fields rename no run, and the tuner picks every method's grid
point by its mean validation score."""

import json
from collections import Counter

import pytest

from fedmoe.config import ConfigError, RunConfig, load_config
from fedmoe.data.task_data import load_task_data
from fedmoe.experiment import check_config, run_id
from fedmoe.results import load_config_dict, load_rounds
from fedmoe.studies import tuning
from fedmoe.studies.tuning import TuningResult, grid_points, tune

GRID = {"fed.lr": [1e-3, 3e-3, 1e-2]}


def _smoke(**over):
    return load_config(None, {"fed.rounds": 1, "fed.local_steps": 1, "data.n_val": 16, **over}, scale="smoke")


def _gsm8k(path, numbers):
    path.write_text("".join(json.dumps({"question": f"What is {n} + {n}?", "answer": f"#### {2 * n}"}) + "\n"
                            for n in numbers))
    return path


def test_the_validation_items_are_carved_from_the_training_pool_seeded_and_disjoint_from_test():
    cfg = _smoke()
    pool, test = load_task_data(_smoke(**{"data.n_val": 0}).data, seed=0)
    train, test_again = load_task_data(cfg.data, seed=0)
    train_v, val = load_task_data(cfg.data, seed=0, split="val")
    assert len(pool) == 160 and len(val) == 16 and train_v == train and test_again == test
    val_prompts = {ex.prompt for ex in val}
    assert len(val_prompts) == 16 and not val_prompts & {ex.prompt for ex in train}  # no copy left in training
    assert not val_prompts & {ex.prompt for ex in test}
    assert train == [ex for ex in pool if ex.prompt not in val_prompts]  # the rest of the pool, in pool order
    assert not Counter(map(repr, val)) - Counter(map(repr, pool))  # carved from the pool, nothing made up
    assert len(train) < 160 - 16  # the smoke gsm pool repeats prompts: their copies left training too
    assert load_task_data(cfg.data, seed=0, split="val")[1] == val  # deterministic in the data seed ...
    assert load_task_data(cfg.data, seed=1, split="val")[1] != val  # ... and moved by it


def test_published_splits_carve_from_source_and_a_val_run_never_reads_the_test_file(tmp_path):
    train_file, test_file = _gsm8k(tmp_path / "train.jsonl", range(200)), _gsm8k(tmp_path / "test.jsonl", range(900, 940))
    cfg = _smoke(**{"data.source": str(train_file), "data.test_source": str(test_file), "data.n_val": 20})
    source_questions = {f"What is {n} + {n}?" for n in range(200)}
    train, val = load_task_data(cfg.data, seed=0, split="val")
    assert len(train) == 140 and len(val) == 20
    assert all(any(q in ex.prompt for q in source_questions) for ex in val)
    assert not {ex.prompt for ex in val} & {ex.prompt for ex in train}
    test_file.write_text("not json\n")  # a run scored on val must not even open the test file
    assert load_task_data(cfg.data, seed=0, split="val") == (train, val)
    with pytest.raises(Exception, match="test.jsonl"):
        load_task_data(cfg.data, seed=0, split="test")


def test_bad_validation_settings_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.n_val=0 carves none \(fix: e\.g\. --set data\.n_val="):
        load_config(None, {"fed.eval_split": "val"}, scale="smoke")
    with pytest.raises(ConfigError, match=r"data\.n_val=157 is invalid: expected at most .* = 156"):
        load_config(None, {"data.n_val": 157}, scale="smoke")  # 160 training examples, 4 clients
    with pytest.raises(ConfigError, match=r"fed\.eval_split='train' is invalid: expected one of \('test', 'val'\)"):
        load_config(None, {"fed.eval_split": "train"}, scale="smoke")
    with pytest.raises(ConfigError, match=r"data\.n_val=-1"):
        load_config(None, {"data.n_val": -1}, scale="smoke")
    small = _gsm8k(tmp_path / "small.jsonl", range(20))  # 80/20: a pool of 16 rows
    with pytest.raises(ConfigError, match=r"data\.n_val=16 is invalid: the training pool holds 16 examples with 16 "
                       r"distinct prompts, .* at most 15"):
        check_config(_smoke(**{"data.source": str(small), "data.n_val": 16}))


def test_the_new_fields_rename_no_existing_run():
    """Run ids computed before ``data.n_val`` and ``fed.eval_split`` existed; at their defaults the fields are
    neither hashed nor written, set they make another run."""
    assert run_id(RunConfig()) == "run-fedit-default-32b3fa4cd8"
    assert run_id(load_config("reproduce/configs/quickstart.yaml", scale="smoke")) == "quickstart-fedit-smoke-e31083448b"
    plain = load_config(None, {"fed.rounds": 1}, scale="smoke")
    assert "n_val" not in plain.identity()["data"] and "eval_split" not in plain.identity()["fed"]
    carved = load_config(None, {"fed.rounds": 1, "data.n_val": 8}, scale="smoke")
    scored = load_config(None, {"fed.rounds": 1, "data.n_val": 8, "fed.eval_split": "val"}, scale="smoke")
    assert len({plain.digest(), carved.digest(), scored.digest()}) == 3


def _fabricated(tmp_path, fake_run, finals):
    """Run folders whose last evaluation scores ``finals[method][point][seed]`` (an earlier round scores 1.0, which
    the choice must ignore)."""
    return {method: [[fake_run(tmp_path / f"{method}-{i}-{s}", s, [[1.0], [score]]) for s, score in enumerate(seeds)]
                     for i, seeds in enumerate(points)] for method, points in finals.items()}


def test_the_tuner_picks_the_best_mean_validation_score_and_the_first_on_ties(tmp_path, fake_run):
    points = grid_points(GRID)
    finals = {"a": [[0.5, 0.5], [0.9, 0.2], [0.6, 0.6]],  # the best single seed (0.9) is not the best mean (0.6)
              "b": [[0.4, 0.4], [0.1, 0.3], [0.5, 0.3]]}  # 0.4 twice: the first point wins
    result = TuningResult.from_folders(points, _fabricated(tmp_path, fake_run, finals))
    assert result.scores == finals
    assert result.mean_scores("a") == pytest.approx([0.5, 0.55, 0.6])
    assert result.chosen == {"a": {"fed.lr": 1e-2}, "b": {"fed.lr": 1e-3}}
    rows = result.table()
    assert len(rows) == 6 and [r["chosen"] for r in rows] == [False, False, True, True, False, False]
    assert rows[1] == {"method": "a", "fed.lr": 3e-3, "val_score": pytest.approx(0.55), "val_scores": [0.9, 0.2],
                       "chosen": False}
    tuned = result.apply("a", _smoke(**{"fed.eval_split": "val"}))
    assert (tuned.fed.lr, tuned.fed.eval_split, tuned.data.n_val) == (1e-2, "test", 16)
    with pytest.raises(ValueError, match="method 'c' was not tuned; tuned methods: \\['a', 'b'\\]"):
        result.apply("c", _smoke())


def test_a_method_missing_a_grid_point_is_an_error(tmp_path, fake_run):
    folders = _fabricated(tmp_path, fake_run, {"a": [[0.5], [0.6], [0.7]], "b": [[0.5], [0.6], [0.7]]})
    folders["b"][1] = []
    with pytest.raises(ValueError, match=r"method 'b' has no tuning runs at grid point\(s\) \[\{'fed.lr': 0.003\}\]"):
        TuningResult.from_folders(grid_points(GRID), folders)
    folders["b"] = folders["b"][:2]
    with pytest.raises(ValueError, match="method 'b' has runs for 2 grid points, not the grid's 3"):
        TuningResult.from_folders(grid_points(GRID), folders)


def test_a_grid_must_apply_to_every_method_the_same_way(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "run_cells", lambda *a, **k: pytest.fail("a bad grid ran"))
    methods = {"fedit": _smoke(), "hetlora": _smoke(method="hetlora")}
    with pytest.raises(ValueError, match="the tuning grid is empty"):
        tune(methods, {}, out_dir=tmp_path)
    with pytest.raises(ValueError, match="grid key 'fed.lr' has no values"):
        tune(methods, {"fed.lr": []}, out_dir=tmp_path)
    for key in ("data.n_val", "data.alpha", "seed", "method", "fed.eval_split"):
        with pytest.raises(ValueError, match=f"grid key '{key}' cannot be tuned"):
            tune(methods, {key: [1, 2]}, out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"does not apply to method 'fedit' .*weighting"):
        tune(methods, {"method_args.weighting": ["norm", "examples"]}, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="methods 'fedit' and 'hetlora' have different data"):
        tune({"fedit": _smoke(), "hetlora": _smoke(method="hetlora", **{"data.n_val": 8})}, GRID, out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"data\.n_val=0 carves none"):
        tune({"fedit": _smoke(**{"data.n_val": 0})}, GRID, out_dir=tmp_path)


def test_tuning_two_methods_end_to_end_scores_the_validation_items_only(tmp_path):
    methods = {"fedit": _smoke(**{"data.n_val": 8}), "hetlora": _smoke(method="hetlora", **{"data.n_val": 8})}
    result = tune(methods, {"fed.lr": [1e-3, 1e-2]}, out_dir=tmp_path, jobs=1, progress=False)
    for method, points in result.folders.items():
        for i, (folder,) in enumerate(points):
            config = load_config_dict(folder)
            assert (config["method"], config["fed"]["eval_split"], config["fed"]["lr"]) == (
                method, "val", [1e-3, 1e-2][i])
            scored = [r for r in load_rounds(folder) if "score" in r]
            assert scored and all(len(r["item_scores"]) == 8 for r in scored)  # the n_val items, not the 32 test items
            assert result.scores[method][i] == [scored[-1]["score"]]
        best = max(range(2), key=lambda i: result.scores[method][i][0])
        assert result.chosen[method] == {"fed.lr": [1e-3, 1e-2][best]}
        assert result.apply(method, methods[method]).fed.eval_split == "test"
