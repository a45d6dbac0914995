"""Bad input a user can give, through the CLI: each case ends in ONE clear line naming the problem (exit 2,
no traceback), writes nothing, and (except the cases that need a trained round to fail) loads no model."""

import json
import re

import pytest
import yaml

from fedmoe import cli
from fedmoe.config import RunConfig, save_config

SMOKE = ["--scale", "smoke"]

# (id, command-line arguments after `fedmoe run`, expected message regex)
CONFIG_CASES = [
    ("unknown-key", ["--set", "fed.roundz=3"], r"unknown config key fed\.roundz.*'rounds'"),
    ("unknown-top-key", ["--set", "bogus=1"], r"unknown config key bogus"),
    ("lr-not-a-number", ["--set", "fed.lr=abc"], r"fed\.lr='abc' is invalid: expected a finite number"),
    ("lr-zero", ["--set", "fed.lr=0"], r"fed\.lr=0 is invalid: expected a number > 0"),
    ("lr-negative", ["--set", "fed.lr=-1e-4"], r"fed\.lr=-0\.0001 is invalid: expected a number > 0"),
    ("lr-inf", ["--set", "fed.lr=.inf"], r"fed\.lr=inf is invalid: expected a finite number"),
    ("rounds-fraction", ["--set", "fed.rounds=2.5"], r"fed\.rounds=2\.5 is invalid: expected an integer"),
    ("rounds-zero", ["--set", "fed.rounds=0"], r"fed\.rounds=0 is invalid: expected a number >= 1"),
    ("batch-bool", ["--set", "fed.batch_size=true"], r"fed\.batch_size=True is invalid: expected an integer"),
    ("eval-every-zero", ["--set", "fed.eval_every=0"], r"fed\.eval_every=0 .*>= 1"),
    ("time-budget-zero", ["--set", "fed.sim_time_budget=0"], r"fed\.sim_time_budget=0 .*simulated seconds > 0"),
    ("more-sampled-than-clients", ["--set", "fed.clients_per_round=5"],
     r"fed\.clients_per_round=5 is invalid: expected at most fed\.num_clients=4"),
    ("no-clients", ["--set", "fed.num_clients=0"], r"fed\.num_clients=0 .*>= 1"),
    ("fewer-examples-than-clients", ["--set", "data.n_train=3"], r"data\.n_train=3 .*one training example per client"),
    ("alpha-zero", ["--set", "data.alpha=0"], r"data\.alpha=0 .*> 0"),
    ("negative-seed", ["--set", "seed=-1"], r"seed=-1 .*>= 0"),
    ("threads-zero", ["--set", "threads=0"], r"threads=0 .*>= 1"),
    ("name-with-slash", ["--set", "name=a/b"], r"name='a/b' .*without path separators"),
    ("unknown-partition", ["--set", "data.partition=random"], r"data\.partition='random' .*'dirichlet'"),
    ("unknown-suite", ["--set", "data.suite=trivia"], r"data\.suite='trivia' .*'gsm'"),
    ("unknown-fleet", ["--set", "cost.fleet=moon"], r"cost\.fleet='moon' .*Known fleets"),
    ("unknown-cost-mode", ["--set", "cost.mode=guess"], r"cost\.mode='guess' .*projection"),
    ("projection-without-arch", ["--set", "cost.mode=projection"], r"cost\.projection=None .*paper architecture"),
    ("unknown-projection", ["--set", "cost.mode=projection", "--set", "cost.projection=gpt-5"],
     r"cost\.projection='gpt-5' .*Unknown paper architecture"),
    ("base-bits-when-trained", ["--set", "cost.base_bits=4"], r"cost\.base_bits=4 only applies with cost\.mode=projection"),
    ("base-bits-unknown", ["--set", "cost.mode=projection", "--set", "cost.projection=olmoe-1b-7b", "--set",
                           "cost.base_bits=3"], r"cost\.base_bits=3 .*4, 8 or 16"),
    ("unknown-method", ["--set", "method=fedavg"], r"method='fedavg' .*registered method.*'fedit'"),
    ("unknown-zoo-model", ["--set", "model.name=tiny-gpt"], r"model\.name='tiny-gpt' .*tiny-mixtral"),
    ("unknown-zoo-scale", ["--set", "model.scale=huge"], r"model\.scale='huge' .*zoo scale"),
    ("missing-model-path", ["--set", "model.path=/no/such/checkpoint"], r"model\.path='/no/such/checkpoint'"),
    ("paper-without-checkpoint", ["--scale", "paper"], r"scale=paper .*model\.path"),
    ("missing-dataset-file", ["--set", "data.source=/no/such/file.jsonl"], r"data\.source='/no/such/file\.jsonl'"),
    ("empty-dataset-glob", ["--set", "data.source=/no/such/*_test.csv"], r"the glob /no/such/\*_test\.csv holds no"),
    ("unknown-dataset-kind", ["--set", "data.kind=mcq"], r"data\.kind='mcq' .*one of \('dolly', 'gsm8k', 'mmlu'"),
    ("kind-without-source", ["--set", "data.kind=mmlu"], r"data\.kind='mmlu' applies only with data\.source"),
    ("test-source-without-source", ["--set", "data.test_source=/t.jsonl"],
     r"data\.test_source='/t\.jsonl' applies only with data\.source"),
    ("override-without-value", ["--set", "fed.rounds"], r"'fed\.rounds' is not of the form key=value"),
    ("repeated-seeds", ["--seeds", "0,0"], r"--seeds '0,0' is invalid: expected distinct"),
    ("seeds-and-seed", ["--seeds", "0,1", "--set", "seed=2"], r"--seeds and --set seed=\.\.\. both set the seed"),
    # method options, checked by name before the method is built
    ("method-arg-unknown", ["--set", "method_args.ranks=4"], r"unknown config key method_args\.ranks.*'rank'"),
    ("method-arg-rank-zero", ["--set", "method_args.rank=0"], r"method_args of method 'fedit': rank=0"),
    ("method-arg-not-bool", ["--set", "method_args.attention=maybe"],
     r"method_args\.attention='maybe' is invalid: expected true or false"),
    ("flux-merge-budget", ["--set", "method=flux", "--set", "method_args.merge_budget=huge"],
     r"merge_budget='huge'; choose one of"),
    ("flux-share-above-one", ["--set", "method=flux", "--set", "method_args.tune_memory_share=1.5"],
     r"tune_memory_share=1\.5 must be in \[0, 1\]"),
    ("flame-temperature", ["--set", "method=flame", "--set", "method_args.temperature=-1"],
     r"temperature=-1 must be >= 0"),
    ("flame-rescaler", ["--set", "method=flame", "--set", "method_args.rescaler=magic"], r"rescaler='magic'; use"),
    ("flame-negative-tier", ["--set", "method=flame", "--set", "method_args.tiers=[0,-1,0,0]"],
     r"tiers=\[0, -1, 0, 0\] must be >= 0"),
    ("flame-tier-thresholds", ["--set", "method=hetlora", "--set", "method_args.tier_tflops=[20,60]"],
     r"tier_tflops=\[20, 60\] must be positive and descending"),
    ("fmq-scheme", ["--set", "method=fmq", "--set", "method_args.scheme=int3"], r"scheme='int3' must be one of"),
    ("fmes-profile-examples", ["--set", "method=fmes", "--set", "method_args.profile_examples=0"],
     r"profile_examples=0 must be >= 1"),
]

# (id, config file text, expected message regex): files given as `fedmoe run FILE --scale smoke`
FILE_CASES = [
    ("invalid-yaml", "fed: [1, 2\n", r"line \d+: not valid YAML"),
    ("not-a-mapping", "- fed\n- data\n", r"must hold a mapping of config keys"),
    ("section-not-a-mapping", "fed: 3\n", r"section fed must be a mapping"),
    ("value-a-preset-replaces", "fed:\n  rounds: 7\n", r"fed\.rounds=7 would be replaced by the generic smoke preset"),
    ("top-level-and-block", "fed: {rounds: 7}\nscales:\n  default: {fed: {rounds: 3}}\n",
     r"fed\.rounds is set at the top level \(7\) and in scales\.default"),
    ("unknown-scale-block", "scales:\n  huge: {fed: {rounds: 3}}\n", r"'scales' must map scale names"),
    ("lr-as-text", "fed:\n  lr: fast\n", r"fed\.lr='fast' is invalid"),
]

GSM_OK = {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}
# (id, file name, file content, expected message regex): data.source files in each supported schema
DATA_CASES = [
    ("empty-jsonl", "d.jsonl", "", r"holds no rows"),
    ("broken-json-line", "d.jsonl", json.dumps(GSM_OK) + "\n{\"question\": \n", r"d\.jsonl, line 2: invalid JSON"),
    ("jsonl-not-object", "d.jsonl", json.dumps(GSM_OK) + "\n[1, 2]\n", r"line 2: expected a JSON object"),
    ("json-not-array", "d.json", json.dumps({"rows": [GSM_OK]}), r"expected a JSON array of row objects"),
    ("csv-field-count", "d.csv", "question,answer\n\"q\",\"#### 1\",extra\n", r"line 2: 3 fields but the header has 2"),
    ("gsm8k-no-final-number", "d.jsonl", "\n".join(json.dumps(r) for r in [GSM_OK, {"question": "q", "answer": "4"}]),
     r"line 2: field 'answer' has no final '#### <number>'"),
    ("dolly-missing-field", "d.jsonl", json.dumps({"instruction": "i", "context": "", "response": "r"}),
     r"cannot tell which dataset|missing field"),
    ("dolly-empty-category", "d.jsonl",
     json.dumps({"instruction": "i", "context": "", "response": "r", "category": " "}), r"field 'category' is empty"),
    ("alpaca-empty-instruction", "d.jsonl", json.dumps({"instruction": "", "input": "", "output": "o"}),
     r"field 'instruction' is empty"),
    ("mmlu-choices-not-list", "d.jsonl",
     json.dumps({"question": "q", "subject": "s", "choices": "abcd", "answer": 0}), r"field 'choices' must be a list"),
    ("mmlu-answer-out-of-range", "d.jsonl",
     json.dumps({"question": "q", "subject": "s", "choices": ["a", "b"], "answer": 5}),
     r"field 'answer' = 5 is out of range for 2 choices"),
    ("mmlu-lettered-bad-letter", "d.csv", "question,A,B,C,D,answer\nq,a,b,c,d,E\n", r"'E' is not one of the letters"),
    ("piqa-label-out-of-range", "d.jsonl", json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 2}),
     r"field 'label' = 2 is out of range for 2 choices"),
    ("unknown-columns", "d.jsonl", json.dumps({"prompt": "p", "completion": "c"}), r"cannot tell which dataset"),
    ("corrupt-parquet", "d.parquet", "PAR1 not really parquet", r"not a readable parquet file"),
    ("wrong-suffix", "d.txt", "question,answer\n", r"data\.source=.*d\.txt.*a file ending in one of"),
    ("too-few-rows-for-clients", "d.jsonl", "\n".join(json.dumps(GSM_OK) for _ in range(3)),
     r"data\.source=.*d\.jsonl' gives 2 training examples \(80% of its rows.*fewer than fed\.num_clients=4"),
]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything loads a base model."""
    import fedmoe.moe.loading

    def refuse(*args, **kwargs):
        raise AssertionError("a base model was loaded for an input that should fail before")

    monkeypatch.setattr(fedmoe.moe.loading, "load_base_model", refuse)


def _fails_cleanly(capsys, argv, match, out_dir=None, *, progress=False):
    """Run ``fedmoe ARGV``: exit 2, one stderr line matching ``match`` (after the progress bars of a run that
    loaded a model when ``progress``), no traceback, nothing in ``out_dir``; returns the line (shared by
    tests/test_bounded_inputs.py)."""
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    if progress:
        err = err.splitlines()[-1]
    assert err.startswith("fedmoe: error: ") and "\n" not in err, err
    assert re.search(match, err), err
    if out_dir is not None:
        assert not out_dir.exists(), f"{out_dir} was written"
    return err


@pytest.mark.parametrize("args,match", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_values(args, match, tmp_path, capsys, no_model):
    out = tmp_path / "results"
    scale = [] if "--scale" in args else SMOKE
    _fails_cleanly(capsys, ["run", *scale, *args, "--out", str(out)], match, out)


@pytest.mark.parametrize("text,match", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_config_files(text, match, tmp_path, capsys, no_model):
    path, out = tmp_path / "c.yaml", tmp_path / "results"
    path.write_text(text)
    _fails_cleanly(capsys, ["run", str(path), *SMOKE, "--out", str(out)], match, out)


def test_missing_config_file(tmp_path, capsys, no_model):
    _fails_cleanly(capsys, ["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")],
                   r"config file .*nope\.yaml does not exist", tmp_path / "r")


@pytest.mark.parametrize("name,content,match", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_dataset_files(name, content, match, tmp_path, capsys, no_model):
    data, out = tmp_path / name, tmp_path / "results"
    data.write_text(content)
    _fails_cleanly(capsys, ["run", *SMOKE, "--set", f"data.source={data}", "--out", str(out)], match, out)


def test_piqa_labels_that_do_not_match(tmp_path, capsys, no_model):
    rows = [{"goal": "g", "sol1": "a", "sol2": "b"}] * 4
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "train-labels.lst").write_text("0\n1\n")
    _fails_cleanly(capsys, ["run", *SMOKE, "--set", f"data.source={tmp_path / 'train.jsonl'}",
                            "--out", str(tmp_path / "results")], r"2 labels for 4 rows", tmp_path / "results")


def _run_folder(folder, rounds_text):
    folder.mkdir(parents=True)
    save_config(RunConfig(), folder / "config.yaml")
    (folder / "rounds.jsonl").write_text(rounds_text)
    return folder


GOOD_ROUNDS = "".join(json.dumps({"round": r, "sim_time": r, "score": 0.1 * r}) + "\n" for r in range(3))
PLOT_CASES = [
    ("missing-folder", None, None, [], r"config\.yaml not found: is .* a run folder"),
    ("no-rounds-file", "config-only", None, [], r"rounds\.jsonl not found"),
    ("truncated-rounds", "run", GOOD_ROUNDS + '{"round": 3, "sco', [], r"rounds\.jsonl, line 4: not a JSON round record"),
    ("not-round-records", "run", '{"score": 1}\n', [], r"line 1: not a round record"),
    ("damaged-config", "bad-config", GOOD_ROUNDS, [], r"config\.yaml is damaged"),
    ("empty-rounds", "run", "", [], r"has no rounds with 'score'"),
    ("unknown-y", "run", GOOD_ROUNDS, ["--y", "accuracy"], r"has no rounds with 'accuracy'"),
]


@pytest.mark.parametrize("kind,rounds,extra,match", [c[1:] for c in PLOT_CASES], ids=[c[0] for c in PLOT_CASES])
def test_bad_run_folders_for_plot(kind, rounds, extra, match, tmp_path, capsys):
    folder = tmp_path / "runs" / "r"
    if kind == "run":
        _run_folder(folder, rounds)
    elif kind == "config-only":
        folder.mkdir(parents=True)
        save_config(RunConfig(), folder / "config.yaml")
    elif kind == "bad-config":
        _run_folder(folder, rounds)
        (folder / "config.yaml").write_text(": [unclosed\n")
    out = tmp_path / "figs" / "f.png"
    _fails_cleanly(capsys, ["plot", str(folder), *extra, "-o", str(out)], match, out.parent)


def test_good_run_folder_plots(tmp_path, capsys):
    """The plot cases above fail because of what they break, not because the fake run folder is wrong."""
    folder = _run_folder(tmp_path / "r", GOOD_ROUNDS)
    assert cli.main(["plot", str(folder), "-o", str(tmp_path / "f.png")]) == 0
    assert yaml.safe_load((folder / "config.yaml").read_text())["method"] == "fedit"


# Budgets that cannot fit only show once a client has trained: these load the smoke model.
LOADING_CASES = [
    ("device-too-small", ["--set", "fed.rounds=1", "--set", "cost.fleet=rtx-3060-12gb", "--set",
                          "cost.mode=projection", "--set", "cost.projection=mixtral-8x7b"],
     r"rtx-3060-12gb.*quantize"),
    ("tiers-per-client", ["--set", "method=flame", "--set", "model.name=tiny-olmoe", "--set",
                          "method_args.tiers=[0,1]"], r"method_args\.tiers needs one tier >= 0 per client \(4 clients\)"),
]


@pytest.mark.parametrize("args,match", [c[1:] for c in LOADING_CASES], ids=[c[0] for c in LOADING_CASES])
def test_budgets_that_cannot_fit(args, match, tmp_path, capsys):
    out = tmp_path / "results"
    _fails_cleanly(capsys, ["run", *SMOKE, *args, "--out", str(out)], match, out, progress=True)
