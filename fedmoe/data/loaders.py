"""Load the papers' real datasets (Dolly-15k, GSM8K, MMLU, PIQA, Alpaca) as common :class:`Example` records.

A source is either a Hub name (read with ``datasets.load_dataset``; ``"name:config"`` picks a config,
e.g. ``"cais/mmlu:anatomy"``) or a local ``.json`` / ``.jsonl`` / ``.parquet`` / ``.csv`` file in the
dataset's *published* schema, or a folder or glob of such files (all of one kind, read in name order: MMLU's
57 per-subject ``data/test/<subject>_test.csv``):

========  ===================================================  ===========  ======================
kind      columns                                              metric       domain
========  ===================================================  ===========  ======================
dolly     instruction, context, response, category            rouge_l      category
alpaca    instruction, input, output                           rouge_l      ``"general"``
gsm8k     question, answer (``"... #### 72"``)                 exact_match  ``"math"``
mmlu      question, subject, choices (list), answer (index)    mc_accuracy  subject
piqa      goal, sol1, sol2, label (0/1)                        mc_accuracy  ``"physical"``
========  ===================================================  ===========  ======================

MMLU also loads in the original lettered CSV layout (``question, A, B, C, D, answer`` with a letter,
headerless as in Hendrycks' ``data/test/<subject>_test.csv``) and with one column per choice
(``question, choice0, choice1, ..., answer``, an index or a letter); without a ``subject`` column the subject
comes from the file name. PIQA loads from the published ``train.jsonl`` + ``train-labels.lst`` pair.

GSM8K's ``answer`` becomes the final number only (``"72"``), so exact match compares the model's final
number; the rationale before ``####`` is dropped. Any malformed row raises :class:`DatasetFormatError`
naming the file and the line (csv/jsonl), element (json array) or row (parquet, Hub), and the fix.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from fedmoe.data.records import Example, extract_gsm8k_answer, format_prompt
from fedmoe.errors import FedmoeError

KINDS = ("dolly", "gsm8k", "mmlu", "piqa", "alpaca")
SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")

# The published columns of each kind, as the error messages quote them.
SCHEMAS = {
    "dolly": "instruction, context, response, category",
    "gsm8k": "question, answer ('<rationale> #### <number>')",
    "mmlu": "question, subject, choices (list of strings), answer (index of the correct choice)",
    "piqa": "goal, sol1, sol2, label (0 or 1)",
    "alpaca": "instruction, input, output",
}
# Columns that identify a kind when `kind` is not given (a kind matches if one set is present).
_SIGNATURES = {
    "dolly": [{"instruction", "context", "response"}],
    "alpaca": [{"instruction", "input", "output"}],
    "gsm8k": [{"question", "answer"}],
    "mmlu": [{"question", "choices", "answer"}, {"question", "A", "B", "C", "D", "answer"},
             {"question", "choice0", "choice1", "answer"}],
    "piqa": [{"goal", "sol1", "sol2"}],
}
_LETTERED_MMLU = ["question", "A", "B", "C", "D", "answer"]
_GLOB_CHARS = "*?["
_LETTERS = "ABCD"
# Hub names whose kind and config are known; other names need `kind` or recognisable columns.
HUB_DATASETS = {
    "databricks/databricks-dolly-15k": ("dolly", None),
    "openai/gsm8k": ("gsm8k", "main"),
    "gsm8k": ("gsm8k", "main"),
    "cais/mmlu": ("mmlu", "all"),
    "ybisk/piqa": ("piqa", None),
    "piqa": ("piqa", None),
    "tatsu-lab/alpaca": ("alpaca", None),
}


class DatasetFormatError(ValueError):
    """A dataset file or row that does not follow the published schema (the message names where and how to fix)."""


@dataclass
class _Table:
    """Rows of one source, read lazily by index, with a human-readable location for each row."""

    label: str  # the file path or the Hub name, for messages
    columns: list[str]
    num_rows: int
    take: Callable[[Sequence[int]], list[dict]]
    where: Callable[[int], str]
    from_text: bool = False  # csv: every value is a string, so integer fields are parsed
    default_subject: str | None = None  # csv: the subject its file name gives (MMLU without a subject column)


def load_records(
    source: str | os.PathLike,
    *,
    kind: str | None = None,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
) -> list[Example]:
    """Load a real dataset from a Hub name or a local file and convert every row to an :class:`Example`.

    Args:
        source: Hub name (``"openai/gsm8k"``, ``"cais/mmlu:anatomy"``), path to a json/jsonl/parquet/csv file,
            or a folder or glob of such files (see :func:`data_files`).
        kind: one of ``KINDS``; inferred from the Hub name or the columns when omitted (every file of a
            folder or glob must then be of the same kind).
        split: the Hub split to load (ignored for local files, which hold one split each).
        limit: keep a random subset of this many rows (chosen by ``seed``, in source order); all if None.
        seed: drives the subset chosen by ``limit``.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; use one of {KINDS}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    source = os.fspath(source)
    if is_local(source):
        tables = [_read_file(path) for path in data_files(source)]
    else:
        name, _, config = source.partition(":")
        hub_kind, hub_config = HUB_DATASETS.get(name.lower(), (_kind_from_name(name), None))
        kind = kind or hub_kind
        tables = [_read_hub(name, config or hub_config, split)]
    kind = kind or _common_kind(tables, source)
    convert = _CONVERTERS[kind]
    records, start = [], 0
    chosen = subset_indices(sum(t.num_rows for t in tables), limit, seed)
    for table in tables:
        indices = [i - start for i in chosen if start <= i < start + table.num_rows]
        start += table.num_rows
        rows = table.take(indices) if indices else []
        records += [convert(row, _Row(table, i, kind)) for i, row in zip(indices, rows, strict=True)]
    return records


# ----------------------------------------------------------------------------------------- sources


def is_local(source: str) -> bool:
    """Whether ``source`` names local files (a path, folder or glob) rather than a Hub dataset."""
    path = Path(source).expanduser()
    return (path.exists() or path.suffix.lower() in SUFFIXES or source.startswith((".", "/", "~"))
            or any(c in source for c in _GLOB_CHARS))


def data_files(source: str) -> list[Path]:
    """The files a local ``source`` names: the file itself, every data file (one of ``SUFFIXES``) directly in a
    folder, or the data files a glob matches, in name order. An error names the source and the fix when it
    names none."""
    path = Path(source).expanduser()
    if any(c in source for c in _GLOB_CHARS):
        files, what = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file()), "glob"
    elif path.is_dir():
        files, what = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES), "folder"
    else:
        return [path]
    files = [p for p in files if p.suffix.lower() in SUFFIXES]
    if not files:
        raise FileNotFoundError(f"the {what} {source} holds no {'/'.join(SUFFIXES)} file. Fix: point it at the "
                                "dataset's files, e.g. data/test/ or 'data/test/*_test.csv' for MMLU")
    return files


def _common_kind(tables: list[_Table], source: str) -> str:
    """The kind every table's columns name; files of different kinds in one source are an error."""
    kinds = {table.label: _infer_kind(table.columns, table.label) for table in tables}
    if len(set(kinds.values())) > 1:
        shown = ", ".join(f"{label}: {kind}" for label, kind in kinds.items())
        raise DatasetFormatError(f"{source} mixes datasets of different kinds ({shown}). Fix: point it at "
                                 "files of one dataset, or set the kind (data.kind, kind=)")
    return next(iter(kinds.values()))


def _read_file(path: Path) -> _Table:
    if not path.exists():
        raise FileNotFoundError(
            f"dataset file not found: {path}. Fix: pass an existing {'/'.join(SUFFIXES)} file, or a Hub name "
            f"such as {', '.join(sorted(HUB_DATASETS))}"
        )
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot read {path}: pass a file ending in one of {SUFFIXES}, or a folder of them")
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    rows, where = _read_jsonl(path) if suffix == ".jsonl" else _read_json(path)
    _attach_piqa_labels(path, rows)
    return _rows_table(str(path), rows, where)


def _rows_table(label: str, rows: list[dict], where: Callable[[int], str], **kw) -> _Table:
    if not rows:
        raise DatasetFormatError(f"{label} holds no rows. Fix: pass a file with at least one example")
    return _Table(label, list(rows[0]), len(rows), lambda idx: [rows[i] for i in idx], where, **kw)


def _read_jsonl(path: Path) -> tuple[list[dict], Callable[[int], str]]:
    rows, lines = [], []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetFormatError(
                    f"{path}, line {lineno}: invalid JSON ({err.msg}, column {err.colno}). "
                    "Fix: write one complete JSON object per line"
                ) from None
            if not isinstance(obj, dict):
                raise DatasetFormatError(
                    f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}. "
                    "Fix: write one JSON object (column -> value) per line"
                )
            rows.append(obj)
            lines.append(lineno)
    return rows, lambda i: f"{path}, line {lines[i]}"


def _read_json(path: Path) -> tuple[list[dict], Callable[[int], str]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON Lines saved as .json (what `Dataset.to_json` writes)
            return _read_jsonl(path)
        raise DatasetFormatError(
            f"{path}, line {err.lineno}: invalid JSON ({err.msg}, column {err.colno}). "
            "Fix: the file must be a JSON array of objects, or one JSON object per line"
        ) from None
    if not isinstance(data, list):
        raise DatasetFormatError(
            f"{path}: expected a JSON array of row objects, got a {type(data).__name__}. "
            "Fix: write the rows as [{...}, {...}] or as JSON Lines"
        )
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DatasetFormatError(
                f"{path}, element [{i}]: expected a JSON object, got {type(obj).__name__}. "
                "Fix: every array element must be an object (column -> value)"
            )
    return data, lambda i: f"{path}, element [{i}]"


def _read_csv(path: Path) -> _Table:
    rows, lines = [], []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        end = 0  # physical line on which the previous record ended (records may span lines)
        try:
            for record in reader:
                start, end = end + 1, reader.line_num
                if not any(cell.strip() for cell in record):
                    continue
                if header is None:
                    header = _csv_header(record)
                    if header is not record:  # headerless lettered MMLU: this line is already data
                        rows.append(dict(zip(header, record, strict=True)))
                        lines.append(start)
                    continue
                if len(record) != len(header):
                    raise DatasetFormatError(
                        f"{path}, line {start}: {len(record)} fields but the header has {len(header)} "
                        f"({', '.join(header)}). Fix: quote fields that contain commas or newlines"
                    )
                rows.append(dict(zip(header, record, strict=True)))
                lines.append(start)
        except csv.Error as err:
            raise DatasetFormatError(f"{path}, line {reader.line_num}: unreadable CSV ({err})") from None
    subject = re.sub(r"_(test|dev|val|validation|train)$", "", path.stem)
    return _rows_table(
        str(path), rows, lambda i: f"{path}, line {lines[i]}", from_text=True, default_subject=subject
    )


def _csv_header(first: list[str]) -> list[str]:
    """The first record itself, or the lettered-MMLU columns when it is already data (Hendrycks' CSVs)."""
    names = {col for sigs in _SIGNATURES.values() for sig in sigs for col in sig} | {"subject", "category"}
    names -= set(_LETTERS)  # an answer letter in the last cell is data, not a column name
    if len(first) == 6 and first[5].strip() in _LETTERS and not names & set(first):
        return _LETTERED_MMLU
    return first


def _read_parquet(path: Path) -> _Table:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DatasetFormatError(f"{path}: not a readable parquet file ({err}). Fix: re-export it") from None
    return _rows_table(str(path), rows, lambda i: f"{path}, row {i}")


def _attach_piqa_labels(path: Path, rows: list[dict]) -> None:
    """PIQA's published jsonl keeps labels in ``<split>-labels.lst`` beside it; merge them in if present."""
    labels_path = path.with_name(f"{path.stem}-labels.lst")
    if not rows or "label" in rows[0] or "goal" not in rows[0] or not labels_path.exists():
        return
    labels = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) != len(rows):
        raise DatasetFormatError(
            f"{labels_path}: {len(labels)} labels for {len(rows)} rows in {path}. "
            "Fix: use the labels file that belongs to this split"
        )
    for row, label in zip(rows, labels, strict=True):
        row["label"] = int(label) if re.fullmatch(r"-?\d+", label) else label


def _read_hub(name: str, config: str | None, split: str) -> _Table:
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # network, unknown name/config/split: all end the same way for the user
        raise FedmoeError(
            f"could not load Hub dataset {name!r} (config {config!r}, split {split!r}): {err}. Fix: check the "
            "name, config and split; without Hub access (HF_HUB_OFFLINE=1), download the files and pass a "
            "local path instead"
        ) from err
    label = f"Hub dataset {name!r} (config {config!r}, split {split!r})"
    if len(ds) == 0:
        raise DatasetFormatError(f"{label} holds no rows. Fix: choose another split")
    return _Table(
        label,
        list(ds.column_names),
        len(ds),
        lambda idx: ds.select(idx).to_list(),
        lambda i: f"{label}, row {i}",
    )


def _kind_from_name(name: str) -> str | None:
    matches = [k for k in KINDS if k in name.lower()]
    return matches[0] if len(matches) == 1 else None


def _infer_kind(columns: Sequence[str], label: str) -> str:
    """The kind whose signature columns are present; the most specific one when several match."""
    cols = set(columns)
    matched = {k: set().union(*(s for s in sigs if s <= cols)) for k, sigs in _SIGNATURES.items()}
    matched = {k: s for k, s in matched.items() if s}
    best = [k for k, s in matched.items() if not any(s < other for other in matched.values())]
    if len(best) == 1:
        return best[0]
    what = f"matches {' and '.join(best)}" if best else "matches none"
    schemas = "; ".join(f"{k}: {v}" for k, v in SCHEMAS.items())
    raise ValueError(
        f"cannot tell which dataset {label} is: its columns ({', '.join(columns)}) {what} of the known "
        f"kinds. Fix: set the kind (--set data.kind=..., kind= in Python) to one of {KINDS}, or use a published "
        f"schema ({schemas})"
    )


def subset_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """``limit`` of ``range(n)`` chosen by ``seed``, in order (all of them when ``limit`` is None or >= n)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).permutation(n)[:limit].tolist())


# ------------------------------------------------------------------------------------------ fields


@dataclass
class _Row:
    """Where a row is, for the field accessors' error messages."""

    table: _Table
    index: int
    kind: str

    def error(self, problem: str, fix: str | None = None) -> DatasetFormatError:
        fix = fix or f"give every row the {self.kind} fields: {SCHEMAS[self.kind]}"
        return DatasetFormatError(f"{self.table.where(self.index)}: {problem}. Fix: {fix}")

    def require(self, row: dict, *keys: str) -> None:
        missing = [key for key in keys if row.get(key) is None]
        if missing:
            raise self.error(
                f"missing field(s) {', '.join(map(repr, missing))} (fields present: {', '.join(row)})"
            )

    def text(self, row: dict, key: str, *, nonempty: bool = False) -> str:
        if row.get(key) is None:
            raise self.error(f"missing field {key!r} (fields present: {', '.join(row)})")
        value = row[key]
        if not isinstance(value, str):
            raise self.error(f"field {key!r} must be a string, got {type(value).__name__} {value!r}")
        if nonempty and not value.strip():
            raise self.error(f"field {key!r} is empty", "fill it in or remove the row")
        return value

    def index_in(self, row: dict, key: str, n: int) -> int:
        if row.get(key) is None:
            raise self.error(f"missing field {key!r} (fields present: {', '.join(row)})")
        value = row[key]
        if self.table.from_text and isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"field {key!r} must be an integer index, got {type(value).__name__} {value!r}")
        if not 0 <= value < n:
            raise self.error(
                f"field {key!r} = {value} is out of range for {n} choices",
                f"use a label in 0..{n - 1} (an unlabelled test split, label -1, cannot be scored: use validation)",
            )
        return value


def _dolly(row: dict, at: _Row) -> Example:
    at.require(row, "instruction", "context", "response", "category")
    prompt = format_prompt(at.text(row, "instruction", nonempty=True), at.text(row, "context"))
    return Example(prompt, at.text(row, "response"), domain=at.text(row, "category", nonempty=True))


def _alpaca(row: dict, at: _Row) -> Example:
    at.require(row, "instruction", "input", "output")
    prompt = format_prompt(at.text(row, "instruction", nonempty=True), at.text(row, "input"))
    return Example(prompt, at.text(row, "output"), domain="general")


def _gsm8k(row: dict, at: _Row) -> Example:
    at.require(row, "question", "answer")
    answer = at.text(row, "answer")
    number = extract_gsm8k_answer(answer) if "####" in answer else None
    if number is None:
        raise at.error(
            f"field 'answer' has no final '#### <number>' ({answer[-60:]!r})",
            "end each GSM8K answer with '#### <number>', as the published data does",
        )
    return Example(
        format_prompt(at.text(row, "question", nonempty=True)), number, domain="math", metric="exact_match"
    )


def _mmlu(row: dict, at: _Row) -> Example:
    at.require(row, "question", "answer")
    question = at.text(row, "question", nonempty=True)
    if "choices" not in row and "A" in row:  # lettered layout: A..D columns, answer letter
        choices = tuple(at.text(row, letter) for letter in _LETTERS)
        letter = at.text(row, "answer").strip().upper()
        if letter not in _LETTERS:
            raise at.error(f"field 'answer' = {row['answer']!r} is not one of the letters A-D")
        label = _LETTERS.index(letter)
        subject = at.text(row, "subject") if "subject" in row else at.table.default_subject
    elif "choices" not in row and "choice0" in row:  # one column per choice: choice0, choice1, ...
        count = next(i for i in range(len(row) + 1) if f"choice{i}" not in row)
        choices = tuple(at.text(row, f"choice{i}") for i in range(count))
        raw = row["answer"]
        letter = raw.strip().upper() if isinstance(raw, str) else None
        label = _LETTERS.index(letter) if letter and letter in _LETTERS[: len(choices)] else at.index_in(
            row, "answer", len(choices))
        subject = at.text(row, "subject", nonempty=True) if "subject" in row else at.table.default_subject
    else:
        raw = row.get("choices")
        if not isinstance(raw, list | tuple) or len(raw) < 2 or not all(isinstance(c, str) for c in raw):
            raise at.error(
                f"field 'choices' must be a list of at least 2 strings, got {raw!r}",
                "store choices as a list (json/jsonl/parquet), or use the lettered CSV layout "
                "question,A,B,C,D,answer",
            )
        choices = tuple(raw)
        label = at.index_in(row, "answer", len(choices))
        subject = at.text(row, "subject", nonempty=True)
    return Example(
        format_prompt(question),
        choices[label],
        choices,
        label,
        domain=subject or "mmlu",
        metric="mc_accuracy",
    )


def _piqa(row: dict, at: _Row) -> Example:
    at.require(row, "goal", "sol1", "sol2", "label")
    choices = (at.text(row, "sol1"), at.text(row, "sol2"))
    label = at.index_in(row, "label", 2)
    prompt = format_prompt(at.text(row, "goal", nonempty=True))
    return Example(prompt, choices[label], choices, label, domain="physical", metric="mc_accuracy")


_CONVERTERS: dict[str, Callable[[dict, _Row], Example]] = {
    "dolly": _dolly,
    "gsm8k": _gsm8k,
    "mmlu": _mmlu,
    "piqa": _piqa,
    "alpaca": _alpaca,
}
