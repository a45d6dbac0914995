"""Real-dataset loaders on small files written in each published schema (never the network)."""

import csv
import json
import os

import datasets
import pytest

from fedmoe.data.loaders import DatasetFormatError, load_records
from fedmoe.data.records import Example

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DOLLY = [
    {
        "instruction": "When did Virgin Australia start operating?",
        "context": "Virgin Australia is an airline.\nIt commenced services on 31 August 2000.",
        "response": "31 August 2000",
        "category": "closed_qa",
    },
    {
        "instruction": "Which is a species of fish? Tope or Rope",
        "context": "",
        "response": "Tope",
        "category": "classification",
    },
]
GSM8K = [
    {
        "question": "Natalia sold clips to 48 friends in April and half as many in May. How many in total?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72.\n#### 72",
    },
    {"question": "Weng earns $12 an hour for 100 hours. How much?", "answer": "12 * 100 = 1200\n#### 1,200"},
]
MMLU = [
    {
        "question": "Find the degree of Q(sqrt(2)) over Q.",
        "subject": "abstract_algebra",
        "choices": ["0", "2", "4", "6"],
        "answer": 1,
    },
    {
        "question": "Which organ pumps blood?",
        "subject": "anatomy",
        "choices": ["lung", "liver", "heart", "skin"],
        "answer": 2,
    },
]
PIQA = [
    {
        "goal": "How do I ready a guinea pig cage?",
        "sol1": "Add paper bedding.",
        "sol2": "Add jeans bedding.",
        "label": 0,
    },
    {
        "goal": "To cool a drink fast,",
        "sol1": "put it in the oven.",
        "sol2": "put it in ice water.",
        "label": 1,
    },
]
ALPACA = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
    {"instruction": "Fix the spelling.", "input": "He finnished his meal", "output": "He finished his meal"},
]
ROWS = {"dolly": DOLLY, "gsm8k": GSM8K, "mmlu": MMLU, "piqa": PIQA, "alpaca": ALPACA}

# The expected conversions, written out by hand (prompt template from fedmoe.data.records).
EXPECTED = {
    "dolly": [
        Example(
            "### Instruction:\nWhen did Virgin Australia start operating?\n\n### Input:\nVirgin Australia is an "
            "airline.\nIt commenced services on 31 August 2000.\n\n### Response:\n",
            "31 August 2000",
            domain="closed_qa",
            metric="rouge_l",
        ),
        Example(
            "### Instruction:\nWhich is a species of fish? Tope or Rope\n\n### Response:\n",
            "Tope",
            domain="classification",
            metric="rouge_l",
        ),
    ],
    "gsm8k": [
        Example(
            f"### Instruction:\n{GSM8K[0]['question']}\n\n### Response:\n",
            "72",
            domain="math",
            metric="exact_match",
        ),
        Example(
            f"### Instruction:\n{GSM8K[1]['question']}\n\n### Response:\n",
            "1200",
            domain="math",
            metric="exact_match",
        ),
    ],
    "mmlu": [
        Example(
            "### Instruction:\nFind the degree of Q(sqrt(2)) over Q.\n\n### Response:\n",
            "2",
            ("0", "2", "4", "6"),
            1,
            domain="abstract_algebra",
            metric="mc_accuracy",
        ),
        Example(
            "### Instruction:\nWhich organ pumps blood?\n\n### Response:\n",
            "heart",
            ("lung", "liver", "heart", "skin"),
            2,
            domain="anatomy",
            metric="mc_accuracy",
        ),
    ],
    "piqa": [
        Example(
            "### Instruction:\nHow do I ready a guinea pig cage?\n\n### Response:\n",
            "Add paper bedding.",
            ("Add paper bedding.", "Add jeans bedding."),
            0,
            domain="physical",
            metric="mc_accuracy",
        ),
        Example(
            "### Instruction:\nTo cool a drink fast,\n\n### Response:\n",
            "put it in ice water.",
            ("put it in the oven.", "put it in ice water."),
            1,
            domain="physical",
            metric="mc_accuracy",
        ),
    ],
    "alpaca": [
        Example(
            "### Instruction:\nGive three tips for staying healthy.\n\n### Response:\n",
            "Eat well, sleep, move.",
            domain="general",
        ),
        Example(
            "### Instruction:\nFix the spelling.\n\n### Input:\nHe finnished his meal\n\n### Response:\n",
            "He finished his meal",
            domain="general",
        ),
    ],
}


def _lettered(rows):
    """MMLU rows in the lettered CSV layout (question, A-D, answer letter)."""
    return [
        {
            "question": r["question"],
            "subject": r["subject"],
            **dict(zip("ABCD", r["choices"], strict=True)),
            "answer": "ABCD"[r["answer"]],
        }
        for r in rows
    ]


def write(path, rows, fmt=None):
    """Write ``rows`` to ``path`` in the format named by its suffix (or ``fmt``)."""
    fmt = fmt or path.suffix[1:]
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows, indent=1))
    elif fmt == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif fmt == "csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
@pytest.mark.parametrize("kind", list(ROWS))
def test_each_schema_and_format_converts(tmp_path, kind, fmt):
    rows = _lettered(ROWS[kind]) if kind == "mmlu" and fmt == "csv" else ROWS[kind]
    path = write(tmp_path / f"{kind}.{fmt}", rows)
    assert load_records(path, kind=kind) == EXPECTED[kind]
    assert load_records(str(path)) == EXPECTED[kind]  # kind inferred from the columns


def test_headerless_hendrycks_mmlu_csv(tmp_path):
    path = tmp_path / "abstract_algebra_test.csv"
    path.write_text('"Find the degree of Q(sqrt(2)) over Q.",0,2,4,6,B\nWhat is 1+1?,1,2,3,4,B\n')
    records = load_records(path)
    assert records[0] == EXPECTED["mmlu"][0]
    assert records[1].choices == ("1", "2", "3", "4") and records[1].label == 1 and records[1].answer == "2"
    path.write_text("What is 1+1?,1,2,3,4,B\nWhat is 2+2?,1,2,3,4,E\n")
    with pytest.raises(
        DatasetFormatError, match=r"abstract_algebra_test\.csv, line 2: .*not one of the letters"
    ):
        load_records(path)


def _mmlu_subjects(folder):
    """MMLU's published per-subject layout: headerless lettered ``<subject>_test.csv`` files (two subjects)."""
    folder.mkdir()
    (folder / "anatomy_test.csv").write_text("Which organ pumps blood?,lung,liver,heart,skin,C\n")
    (folder / "abstract_algebra_test.csv").write_text(
        '"Find the degree of Q(sqrt(2)) over Q.",0,2,4,6,B\n"What is 1+1?",1,2,3,4,B\n')
    (folder / "README.txt").write_text("not data")  # a folder's other files are not read
    return folder


def test_folder_and_glob_read_mmlu_per_subject_files(tmp_path):
    folder = _mmlu_subjects(tmp_path / "test")
    records = load_records(folder)
    assert [r.domain for r in records] == ["abstract_algebra", "abstract_algebra", "anatomy"]  # name order
    assert records[0] == EXPECTED["mmlu"][0] and records[2] == EXPECTED["mmlu"][1]
    assert load_records(str(folder / "*_test.csv")) == records
    assert load_records(str(folder / "anat*"), kind="mmlu") == [EXPECTED["mmlu"][1]]
    assert load_records(folder, limit=2, seed=0) == load_records(folder, limit=2, seed=0)
    assert len(load_records(folder, limit=2, seed=0)) == 2
    (folder / "anatomy_test.csv").write_text("Which organ pumps blood?,lung,liver,heart,skin,C\n"
                                             "Which is a bone?,a,b,c,d,Z\n")
    with pytest.raises(DatasetFormatError, match=r"anatomy_test\.csv, line 2: .*not one of the letters"):
        load_records(folder)  # an error names the file of the folder it is in
    write(folder / "gsm.jsonl", GSM8K)
    with pytest.raises(DatasetFormatError, match=r"mixes datasets of different kinds .*gsm\.jsonl: gsm8k"):
        load_records(folder)
    with pytest.raises(FileNotFoundError, match=r"the glob .*\*_dev\.csv holds no .* file"):
        load_records(str(folder / "*_dev.csv"))
    with pytest.raises(FileNotFoundError, match=r"the folder .*empty holds no"):
        (tmp_path / "empty").mkdir()
        load_records(tmp_path / "empty")


def test_mmlu_with_one_column_per_choice_is_not_taken_for_gsm8k(tmp_path):
    path = tmp_path / "anatomy_test.csv"
    path.write_text("question,choice0,choice1,choice2,choice3,answer\n"
                    "Which organ pumps blood?,lung,liver,heart,skin,2\nWhich is a bone?,femur,aorta,lung,skin,A\n")
    records = load_records(path)  # inferred: mmlu's columns include gsm8k's question/answer
    assert records[0] == EXPECTED["mmlu"][1]
    assert records[1].label == 0 and records[1].domain == "anatomy"
    assert load_records(path, kind="mmlu") == records
    with pytest.raises(DatasetFormatError, match=r"line 2: field 'answer' has no final '#### <number>'"):
        load_records(path, kind="gsm8k")


def test_piqa_published_jsonl_with_labels_file(tmp_path):
    write(tmp_path / "train.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in PIQA])
    (tmp_path / "train-labels.lst").write_text("0\n1\n")
    assert load_records(tmp_path / "train.jsonl") == EXPECTED["piqa"]
    (tmp_path / "train-labels.lst").write_text("0\n")
    with pytest.raises(DatasetFormatError, match="1 labels for 2 rows"):
        load_records(tmp_path / "train.jsonl")


def test_json_lines_saved_as_json(tmp_path):
    path = tmp_path / "dolly.json"
    datasets.Dataset.from_list(DOLLY).to_json(str(path))  # HF writes JSON Lines even into .json
    assert load_records(path) == EXPECTED["dolly"]


def test_limit_picks_a_seeded_subset_in_source_order(tmp_path):
    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(30)]
    path = write(tmp_path / "alpaca.jsonl", rows)
    a = [int(r.answer) for r in load_records(path, limit=6, seed=3)]
    assert a == sorted(a) and len(set(a)) == 6
    assert a == [int(r.answer) for r in load_records(path, limit=6, seed=3)]
    assert a != [int(r.answer) for r in load_records(path, limit=6, seed=4)]
    assert len(load_records(path, limit=100)) == 30
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        load_records(path, limit=0)


# ------------------------------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset file not found: .*nope\.jsonl.*Fix"):
        load_records(tmp_path / "nope.jsonl")


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps(GSM8K[0]) + "\n\n" + '{"question": "x", "answer": \n')
    with pytest.raises(DatasetFormatError, match=r"gsm8k\.jsonl, line 3: invalid JSON.*Fix"):
        load_records(path)


def test_missing_field_names_line_and_schema(tmp_path):
    path = tmp_path / "dolly.jsonl"
    broken = {k: v for k, v in DOLLY[1].items() if k != "response"}
    path.write_text(json.dumps(DOLLY[0]) + "\n\n" + json.dumps(broken) + "\n")
    with pytest.raises(DatasetFormatError) as info:
        load_records(path, kind="dolly")
    msg = str(info.value)
    assert (
        f"{path}, line 3: missing field(s) 'response' (fields present: instruction, context, category)" in msg
    )
    assert "Fix: give every row the dolly fields: instruction, context, response, category" in msg


def test_csv_line_numbers_count_multiline_records(tmp_path):
    rows = [DOLLY[0], {**DOLLY[1], "category": ""}]  # row 1 spans lines 2-3, so row 2 starts on line 4
    path = write(tmp_path / "dolly.csv", rows)
    with pytest.raises(DatasetFormatError, match=r"dolly\.csv, line 4: field 'category' is empty"):
        load_records(path)
    path.write_text(path.read_text().rstrip().rstrip(",") + "\n")
    with pytest.raises(DatasetFormatError, match=r"line 4: 3 fields but the header has 4"):
        load_records(path)


def test_csv_label_out_of_range(tmp_path):
    path = write(tmp_path / "piqa.csv", [PIQA[0], {**PIQA[1], "label": 2}])
    with pytest.raises(
        DatasetFormatError, match=r"piqa\.csv, line 3: field 'label' = 2 is out of range for 2"
    ):
        load_records(path)


def test_json_element_wrong_type(tmp_path):
    path = write(tmp_path / "piqa.json", [PIQA[0], {**PIQA[1], "label": "1"}])
    with pytest.raises(
        DatasetFormatError, match=r"piqa\.json, element \[1\]: field 'label' must be an integer"
    ):
        load_records(path)
    path.write_text('[{"goal": "x",]')
    with pytest.raises(DatasetFormatError, match=r"piqa\.json, line 1: invalid JSON"):
        load_records(path)


def test_parquet_row_out_of_range(tmp_path):
    path = write(tmp_path / "mmlu.parquet", [MMLU[0], {**MMLU[1], "answer": 4}])
    with pytest.raises(DatasetFormatError, match=r"mmlu\.parquet, row 1: field 'answer' = 4 is out of range"):
        load_records(path)


def test_gsm8k_without_final_answer(tmp_path):
    path = write(tmp_path / "gsm8k.jsonl", [GSM8K[0], {**GSM8K[1], "answer": "He earns 1200."}])
    with pytest.raises(DatasetFormatError, match=r"line 2: field 'answer' has no final '#### <number>'"):
        load_records(path)


def test_wrong_kind_and_ambiguous_or_unknown_columns(tmp_path):
    path = write(tmp_path / "mixed.jsonl", [{**DOLLY[0], "input": "", "output": "x"}])
    with pytest.raises(ValueError, match=r"matches dolly and alpaca .*Fix: set the kind \(--set data\.kind="):
        load_records(path)
    assert load_records(path, kind="alpaca")[0].answer == "x"
    path = write(tmp_path / "other.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(
        ValueError, match=r"matches none of the known kinds.*'dolly', 'gsm8k', 'mmlu', 'piqa'"
    ):
        load_records(path)
    with pytest.raises(ValueError, match="unknown dataset kind 'squad'"):
        load_records(path, kind="squad")
    with pytest.raises(DatasetFormatError, match="missing field\\(s\\) 'goal', 'sol1', 'sol2', 'label'"):
        load_records(write(tmp_path / "g.jsonl", GSM8K), kind="piqa")


# --------------------------------------------------------------------------------------------- Hub


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace ``datasets.load_dataset`` by an in-memory Hub holding the published schemas."""
    calls = []
    hub = {
        "openai/gsm8k": GSM8K,
        "cais/mmlu": MMLU,
        "databricks/databricks-dolly-15k": DOLLY,
        "someone/instructions": ALPACA,
    }

    def load_dataset(name, config=None, *, split):
        calls.append((name, config, split))
        if name not in hub:
            raise ConnectionError("offline")
        return datasets.Dataset.from_list(hub[name])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_names_pick_kind_and_config(fake_hub):
    assert load_records("openai/gsm8k") == EXPECTED["gsm8k"]
    assert load_records("cais/mmlu:anatomy", split="test") == EXPECTED["mmlu"]
    assert load_records("databricks/databricks-dolly-15k", limit=1, seed=0)[0] in EXPECTED["dolly"]
    assert load_records("someone/instructions") == EXPECTED["alpaca"]  # kind from the columns
    assert fake_hub == [
        ("openai/gsm8k", "main", "train"),
        ("cais/mmlu", "anatomy", "test"),
        ("databricks/databricks-dolly-15k", None, "train"),
        ("someone/instructions", None, "train"),
    ]


def test_hub_errors(fake_hub, monkeypatch):
    with pytest.raises(RuntimeError, match=r"could not load Hub dataset 'ybisk/piqa'.*pass a local path"):
        load_records("ybisk/piqa")
    monkeypatch.setitem(MMLU[1], "answer", 7)
    with pytest.raises(
        DatasetFormatError, match=r"Hub dataset 'cais/mmlu' \(config 'all', split 'test'\), row 1"
    ):
        load_records("cais/mmlu", split="test")


def test_a_hub_test_source_loads_the_test_split(fake_hub):
    from fedmoe.config import DataConfig
    from fedmoe.data.task_data import load_task_data

    data = DataConfig(source="openai/gsm8k", test_source="openai/gsm8k", n_train=2, n_test=2)
    assert load_task_data(data) == (EXPECTED["gsm8k"], EXPECTED["gsm8k"])
    assert fake_hub == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
