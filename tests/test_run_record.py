"""What a run folder records of its config (every method option, the run id unchanged) and how often a config is
checked on its way to a run."""

import dataclasses
import json

import pytest

from fedmoe.config import ConfigError, RunConfig, from_dict, load_config
from fedmoe.experiment import check_config, open_run_folder, run_id
from fedmoe.methods.flame.method import FlameArgs
from fedmoe.results import RESOLVED_METHOD_ARGS, RunFolder, load_config_dict


def _flame():
    return check_config(load_config(None, {"method": "flame", "method_args.rank": 4}, scale="smoke"))


def test_run_ids_of_existing_configs_are_unchanged():
    """Run folders are named by the run id: recording the method's options must rename none (ids as before)."""
    assert run_id(check_config(RunConfig())) == "run-fedit-default-32b3fa4cd8"
    assert run_id(_flame()) == "run-flame-smoke-cc59a66166"


def test_a_run_folder_records_every_option_of_its_method(tmp_path):
    cfg = _flame()
    folder = open_run_folder(cfg, tmp_path / run_id(cfg), resume=False)
    folder.unlock()
    assert folder.method_options() == dataclasses.asdict(FlameArgs(rank=4))  # the defaults too, e.g.:
    assert folder.method_options()["temperature"] == 2.0
    # ... beside the config, which reads back as before: what was given, the same run
    assert RESOLVED_METHOD_ARGS not in load_config_dict(folder.path)
    assert load_config_dict(folder.path)["method_args"] == {"rank": 4}
    back = from_dict(load_config_dict(folder.path))
    assert run_id(back) == run_id(cfg) and folder.holds_config(cfg)
    open_run_folder(cfg, folder.path, resume=True).unlock()  # and the run resumes there


def test_a_folder_written_before_the_options_were_recorded_still_holds_its_run(tmp_path):
    cfg = _flame()
    folder = RunFolder(tmp_path / "old")
    folder.create()
    folder.write_config(cfg)  # as earlier runs wrote it: the config alone
    assert folder.method_options() is None and folder.holds_config(cfg)
    assert not folder.holds_config(load_config(None, {"method": "flame", "method_args.rank": 2}, scale="smoke"))


def test_a_config_is_checked_once_until_its_dataset_changes(tmp_path, monkeypatch):
    import fedmoe.data.task_data as task_data

    reads = []
    real = task_data.load_task_data
    monkeypatch.setattr(task_data, "load_task_data", lambda *a, **k: reads.append(1) or real(*a, **k))
    path = tmp_path / "train.jsonl"

    def write(rows: int) -> None:
        path.write_text("\n".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i + 1} #### {i + 1}"})
                                  for i in range(rows)))

    write(10)
    cfg = check_config(load_config(None, {"data.source": str(path)}, scale="smoke"))
    check_config(cfg)  # grid, CLI or engine, then the run: the rows are read once
    check_config(load_config(None, {"data.source": str(path)}, scale="smoke"))  # an equal config: once too
    assert len(reads) == 1
    write(4)  # 80% of 4 rows leaves 3 training examples for 4 clients: the changed file is checked again
    with pytest.raises(ConfigError, match="gives 3 training examples"):
        check_config(cfg)
    assert len(reads) == 2
