"""The generated results report (``figures/REPORT.md``) and the README section pasted from it.

Each study (a benchmark script or notebook) writes one *section*: its paper's targets with measured intervals and
verdicts, and its methods' scores on its benchmark (:func:`save_section`, a JSON file per study).
:func:`render_report` turns every section into one markdown report; :func:`sync_readme` pastes the report's
target tables into README.md between the markers ``<!-- report:start -->`` and ``<!-- report:end -->``, so no
result is typed by hand and none can go stale. Output is deterministic (sorted, no timestamps): the same sections
give a byte-identical report.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedmoe.config import SCALE_CAVEATS, SCALES
from fedmoe.environment import EXACT_FIELDS, common_fingerprint, drift, drift_meaning
from fedmoe.results import read_environments
from fedmoe.stats import EXACT, Goal, Interval, judge

#: The papers whose targets the report lists, in this order (a paper without measured rows says so).
PAPERS = ("FLUX", "FFT-MoE", "FLAME")
#: The command that writes the report; the report's header names it.
REPORT_COMMAND = "python reproduce/make_report.py --sections figures/report"
#: The command that re-pastes the README section from the committed report.
README_COMMAND = "python reproduce/make_report.py --readme-only"
README_START, README_END = "<!-- report:start -->", "<!-- report:end -->"
_TARGETS_START, _TARGETS_END = "<!-- targets:start -->", "<!-- targets:end -->"
_GLANCE_START, _GLANCE_END = "<!-- glance:start -->", "<!-- glance:end -->"
_STUDY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


#: What a claim's row scores: the server's global model, what each client deploys (|D_i|-weighted mean of the
#: clients' deployed models, :mod:`fedmoe.studies.deployed`), or a mechanism's own measurement (time, bytes, an
#: error or a load statistic: no model is scored).
GLOBAL, DEPLOYED, MECHANISM = "global", "deployed", "mechanism"
PROTOCOLS = (GLOBAL, DEPLOYED, MECHANISM)


@dataclass(frozen=True)
class Precondition:
    """A claim that must hold for another claim's test to mean anything, measured with its own interval (a FAILED
    precondition makes the claim NOT TESTABLE, :func:`fedmoe.stats.judge`)."""

    statement: str
    measured: Interval
    goal: Goal
    bound: str = EXACT

    @property
    def verdict(self) -> str:
        """The precondition's own verdict."""
        return self.goal.judge(self.measured, self.bound)

    def summary(self) -> str:
        """``"top-1 costs less than rank 8 -> 2: 3.1 ± ... (> +0.0 points) MET"``."""
        return f"{self.statement}: {self.goal.format(self.measured)} ({self.goal.text()}) {self.verdict}"


@dataclass(frozen=True)
class TargetRow:
    """One claim as measured: the interval, the :class:`~fedmoe.stats.Goal` it is judged against, and the verdict
    that follows from them (:attr:`verdict`, never typed: the goal renders its own text and judges with the one
    rule of :func:`fedmoe.stats.judge`).

    ``command`` regenerates the measurement; ``seeds`` is how many seeds it rests on; ``protocol`` what it scores
    (:data:`PROTOCOLS`); ``source`` where the claim is stated (a paper's section or abstract, or ``"ours"``);
    ``bound`` whether ``measured`` is the quantity or only a bound on it (:data:`fedmoe.stats.BOUNDS`);
    ``preconditions`` the measured claims the test needs (any FAILED: NOT TESTABLE); ``claim`` the key of the
    declared claim and ``axis`` / ``axis_value`` the point of the setting it was measured at, for claims mapped
    over a setting (:func:`claim_map`). ``run_scale`` is the kit scale of its runs (:data:`fedmoe.config.SCALES`;
    None: not recorded): at a scale whose verdicts are no evidence the row shows its verdict labelled so
    (:attr:`labelled_verdict`), while :attr:`verdict` stays the bare word.
    """

    paper: str
    target: str
    measured: Interval
    goal: Goal
    command: str
    note: str = ""
    seeds: int | None = None
    run_scale: str | None = None
    protocol: str = GLOBAL
    source: str = ""
    bound: str = EXACT
    preconditions: tuple[Precondition, ...] = ()
    claim: str = ""
    axis: str | None = None
    axis_value: float | str | None = None

    @property
    def verdict(self) -> str:
        """MET / FAILED / UNRESOLVED from the goal, or NOT TESTABLE when a precondition FAILED."""
        return judge(self.measured, self.goal, bound=self.bound,
                     preconditions=tuple(p.verdict for p in self.preconditions))

    @property
    def labelled_verdict(self) -> str:
        """The verdict with its scale's caveat (``MET (smoke: plumbing check)``), or the bare word at a scale
        whose verdicts are evidence."""
        caveat = SCALE_CAVEATS.get(self.run_scale)
        return f"{self.verdict} ({caveat})" if caveat else self.verdict

    def summary(self) -> str:
        """One printable line: the verdict (labelled by its scale), the target, the measured interval in the goal's
        units and the goal."""
        return f"{self.labelled_verdict:<10} {self.target}: {self.goal.format(self.measured)} (goal {self.goal.text()})"

    def __post_init__(self):
        if self.run_scale is not None and self.run_scale not in SCALES:
            raise ValueError(f"TargetRow {self.target!r}: run_scale must be one of {SCALES} or None, got "
                             f"{self.run_scale!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"TargetRow {self.target!r}: protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if not isinstance(self.goal, Goal):
            raise TypeError(f"TargetRow {self.target!r}: goal must be a fedmoe.stats.Goal (it renders its own text "
                            f"and judges the row), got {self.goal!r}")
        if (self.axis is None) != (self.axis_value is None):
            raise ValueError(f"TargetRow {self.target!r}: give both axis and axis_value, or neither")


@dataclass(frozen=True)
class HeadToHeadRow:
    """One method's score on a benchmark, with optional extra columns (trainable params, bytes up ...).

    ``benchmark`` names what the score was measured on (suite, base model, fleet): the report compares rows only
    within one benchmark, since a score on another suite or model is not comparable.
    """

    method: str
    score: Interval
    columns: dict[str, float | int | str] = field(default_factory=dict)
    benchmark: str = ""


@dataclass(frozen=True)
class Section:
    """What one study contributes to the report: its target rows, its head-to-head rows and the environment
    fingerprint of the runs they were measured on (:func:`fedmoe.environment.common_fingerprint`; ``None`` for a
    section written before fingerprints were recorded)."""

    study: str
    targets: tuple[TargetRow, ...] = ()
    head_to_head: tuple[HeadToHeadRow, ...] = ()
    environment: dict | None = None


def _interval_to_json(interval: Interval) -> dict:
    """An interval as JSON-safe numbers (nan bounds as null, since JSON has no nan)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(interval).items()}


def _interval_from_json(data: dict) -> Interval:
    """Inverse of :func:`_interval_to_json`."""
    return Interval(**{k: (math.nan if v is None else v) for k, v in data.items()})


def _row_to_json(row: TargetRow) -> dict:
    """A target row as JSON: its fields (the goal and preconditions as objects) and, for a reader without the
    package, its goal text and verdict (recomputed on load, never read back)."""
    data = {**asdict(row), "measured": _interval_to_json(row.measured), "goal": row.goal.to_json(),
            "preconditions": [{**asdict(p), "measured": _interval_to_json(p.measured), "goal": p.goal.to_json()}
                              for p in row.preconditions]}
    return {**data, "goal_text": row.goal.text(), "verdict": row.verdict}


def _row_from_json(data: dict) -> TargetRow:
    """Inverse of :func:`_row_to_json`."""
    fields = {k: v for k, v in data.items() if k not in ("goal_text", "verdict")}
    pre = tuple(Precondition(**{**p, "measured": _interval_from_json(p["measured"]), "goal": Goal(**p["goal"])})
                for p in fields.pop("preconditions", []))
    return TargetRow(**{**fields, "measured": _interval_from_json(fields["measured"]), "goal": Goal(**fields["goal"]),
                        "preconditions": pre})


def save_section(folder: str | Path, study: str, targets: Sequence[TargetRow] = (),
                 head_to_head: Sequence[HeadToHeadRow] = (), environment: dict | None = None) -> Path:
    """Write ``<folder>/<study>.json`` (e.g. ``figures/report/flame.json``) and return its path.

    ``study`` is a lower-case name (letters, digits, ``-``, ``_``). Rows keep their order (the report lists
    targets in the order a study gives them). ``environment`` is the fingerprint of the runs behind the rows;
    by default, that of every run folder this process has read (:data:`fedmoe.results.READ_RUNS`).
    """
    if not _STUDY_NAME.fullmatch(study):
        raise ValueError(f"study name {study!r} must be lower-case letters, digits, '-' or '_' (it names the file)")
    data = {
        "study": study,
        "targets": [_row_to_json(row) for row in targets],
        "head_to_head": [{**asdict(row), "score": _interval_to_json(row.score)} for row in head_to_head],
        "environment": environment if environment is not None else common_fingerprint(read_environments()),
    }
    path = Path(folder) / f"{study}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def load_sections(folder: str | Path) -> list[Section]:
    """Every section saved in ``folder`` (``*.json``), sorted by study name. An empty folder gives ``[]``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"sections folder {folder} not found: run the benchmarks (they write one JSON per "
                                f"study there) or create it empty to render a report with nothing measured")
    sections = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        try:
            targets = tuple(_row_from_json(row) for row in data["targets"])
            rows = tuple(HeadToHeadRow(**{**row, "score": _interval_from_json(row["score"])})
                         for row in data["head_to_head"])
            sections.append(Section(data["study"], targets, rows, data.get("environment")))
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a report section written by this fedmoe.report.save_section ({error}; a "
                             "section from before declared claims stores its goal as text): delete it and re-run its "
                             "study (python -m fedmoe.studies --list names them)") from error
    return sorted(sections, key=lambda s: s.study)


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _value(value: float | int | str) -> str:
    """An extra head-to-head column's value: integers with thousands separators, floats to 4 significant digits."""
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def _paper_tables(sections: Sequence[Section]) -> list[str]:
    """The targets block: legend, then one table per paper (known papers first, in :data:`PAPERS` order)."""
    by_paper: dict[str, list[TargetRow]] = {}
    for section in sections:
        for row in section.targets:
            by_paper.setdefault(row.paper, []).append(row)
    papers = list(PAPERS) + sorted(set(by_paper) - set(PAPERS))
    lines = [] if by_paper else ["No study has been run with seeds and intervals yet.", ""]
    lines.append("Measured: mean ± half-width [95% confidence interval], scores in points out of 100, ratios as "
                 "they are. A target is MET only when its whole interval clears the goal (an interval touching it "
                 "does not), FAILED only when its whole interval is on the wrong side, otherwise UNRESOLVED; NOT "
                 "TESTABLE when a precondition it needs FAILED. Protocol: `global` scores the server's global model, "
                 "`deployed` the |D_i|-weighted mean of what each client deploys, `mechanism` a measurement that "
                 "scores no model (time, error, load). Source: where the paper states the claim, or `ours`.")
    for paper in papers:
        lines += ["", f"### {paper}", ""]
        rows = by_paper.get(paper)
        if not rows:
            lines.append("Not yet measured with seeds.")
            continue
        lines += _table(["target", "source", "protocol", "measured", "goal", "verdict", "preconditions", "seeds",
                         "command"], [
            [r.target, r.source or "—", r.protocol, r.goal.format(r.measured), r.goal.text(),
             f"**{r.labelled_verdict}**", " / ".join(p.verdict for p in r.preconditions) or "none",
             "—" if r.seeds is None else str(r.seeds), f"`{r.command}`"] for r in rows])
        notes = [r for r in rows if r.note or r.preconditions]
        if notes:
            lines.append("")
            lines += [f"- {r.target}: " + "; ".join([*([r.note] if r.note else []),
                                                       *(f"precondition {p.summary()}" for p in r.preconditions)])
                      for r in notes]
        maps = claim_maps(rows)
        if maps:
            lines += ["", "Claims mapped over a setting:", ""]
            lines += [f"- {claim}: {headline}" for claim, headline in maps.items()]
    return lines


def _axis_text(value: float | str) -> str:
    return f"{value:g}" if isinstance(value, float | int) else str(value)


def map_label(row: TargetRow) -> str:
    """The name of the claim map a row belongs to: its target without the qualifier naming its axis point
    (``"FLAME beats the best baseline (heavy-tail, 24 rounds)"`` -> ``"FLAME beats the best baseline (24
    rounds)"``), so the rows of one claim at one horizon form one map."""
    head, _, inner = row.target.partition(" (")
    point = re.compile(rf"(^|\W){re.escape(_axis_text(row.axis_value))}(\W|$)")
    kept = [part for part in inner.removesuffix(")").split(", ") if part and not point.search(part)]
    return f"{head} ({', '.join(kept)})" if kept else head


def claim_maps(rows: Sequence[TargetRow]) -> dict[str, str]:
    """``{map label: headline}`` for every claim measured at points of an axis (:func:`map_label`): where it
    holds, e.g. ``"MET at bandwidth 0.1, 1; FAILED at bandwidth 10"`` (points in the rows' order, grouped by
    verdict)."""
    points: dict[str, list[TargetRow]] = {}
    for row in rows:
        if row.axis is not None:
            points.setdefault(map_label(row), []).append(row)
    out = {}
    for label, group in points.items():
        by_verdict: dict[str, list[str]] = {}
        for row in group:
            by_verdict.setdefault(row.labelled_verdict, []).append(_axis_text(row.axis_value))
        out[label] = "; ".join(f"{word} at {group[0].axis} {', '.join(values)}" for word, values in by_verdict.items())
    return out


def _rank(study_row: tuple[str, HeadToHeadRow]) -> tuple:
    """Sort key of a head-to-head row: best mean first, undefined means last, then method and study names."""
    study, row = study_row
    undefined = math.isnan(row.score.mean)
    return undefined, 0.0 if undefined else -row.score.mean, row.method, study


def _head_to_head_table(sections: Sequence[Section]) -> list[str]:
    """Every method's score, one table per benchmark (suite and split, model, fleet), best mean first (undefined
    last)."""
    rows = [(section.study, row) for section in sections for row in section.head_to_head]
    if not rows:
        return ["No method has been measured on a benchmark with seeds yet."]
    lines: list[str] = []
    for benchmark in sorted({row.benchmark for _, row in rows}):
        group = sorted(((study, row) for study, row in rows if row.benchmark == benchmark), key=_rank)
        extra = sorted({key for _, row in group for key in row.columns})
        lines += [f"### {benchmark or 'benchmark not recorded'}", "",
                  *_table(["method", "score", "study", *extra], [
                      [row.method, row.score.format(), study,
                       *(_value(row.columns[k]) if k in row.columns else "—" for k in extra)]
                      for study, row in group]), ""]
    return lines[:-1]


#: The fingerprint fields the report's environment table shows, in order.
_ENV_COLUMNS = ("runs", "python", "torch", "transformers", "peft", "numpy", "cpu_capability", "torch_threads",
                "device", "lock_sha256", "lock_matches")


def _environment_table(sections: Sequence[Section]) -> list[str]:
    """One row per section: the fingerprint of the runs behind it (a list where its runs disagreed)."""
    def cell(env: dict | None, key: str) -> str:
        if env is None:
            return "not recorded" if key == "runs" else "—"
        value = env.get(key)
        return "/".join(map(str, value)) if isinstance(value, list) else str(value)

    return _table(["study", *_ENV_COLUMNS], [[s.study, *(cell(s.environment, k) for k in _ENV_COLUMNS)]
                                              for s in sections])


def environment_drift(sections: Sequence[Section], current: dict) -> dict[str, list[str]]:
    """``{study: lines}`` for every section whose recorded fingerprint differs from ``current``
    (:func:`fedmoe.environment.drift`; a section with no fingerprint gives one line saying so)."""
    out = {}
    for section in sections:
        if section.environment is None:
            out[section.study] = ["no environment recorded (the section predates fingerprints)"]
        elif lines := drift(section.environment, current, EXACT_FIELDS):
            out[section.study] = lines
    return out


def drift_notice(sections: Sequence[Section], current: dict) -> str:
    """What to print before a reproduction: each section whose runs' environment differs from ``current``, how,
    and what that means for its numbers (one line when every section matches)."""
    drifted = environment_drift(sections, current)
    if not drifted:
        return f"environment: matches the one recorded by all {len(sections)} report sections"
    lines = [f"environment: {len(drifted)} of {len(sections)} report sections were measured elsewhere:"]
    for study, diffs in drifted.items():
        lines.append(f"  {study}: " + "; ".join(diffs))
    known = sorted({line for diffs in drifted.values() for line in diffs if not line.startswith("no environment")})
    lines.append("  " + (drift_meaning(known) if known else "Sections that record no environment cannot say whether "
                         "their scores reproduce exactly: regenerate them with `make reproduce`."))
    if current.get("lock") and not current["lock"]["matches"]:
        names = ", ".join(current["lock"]["differs"])
        lines.append(f"  the installed packages differ from reproduce/requirements.lock ({names}): `make setup` "
                     f"installs the locked set")
    return "\n".join(lines)


def render_report(sections: Sequence[Section], command: str = REPORT_COMMAND) -> str:
    """The markdown of ``figures/REPORT.md``: a generated-file header, each paper's targets, the head-to-head and
    the environment each section's runs came from."""
    sections = sorted(sections, key=lambda s: s.study)
    studies = ", ".join(f"`{s.study}`" for s in sections) or "none yet"
    lines = [
        "# Results report",
        "",
        f"Generated by `{command}` from the study sections the benchmarks write (studies: {studies}). Do not edit "
        f"this file by hand; `{README_COMMAND}` pastes its claims-at-a-glance table into README.md.",
        "",
        "## Claims at a glance",
        "",
        _GLANCE_START,
        *_glance_table(sections),
        _GLANCE_END,
        "",
        "## Targets",
        "",
        _TARGETS_START,
        *_paper_tables(sections),
        _TARGETS_END,
        "",
        "## Head-to-head",
        "",
        "Scores compare only within one benchmark (suite and split · base model · fleet); each study runs its own.",
        "",
        *_head_to_head_table(sections),
        "",
        "## Environments",
        "",
        "The fingerprint of the runs behind each section (`environment.json` of every run it read; "
        "`fedmoe.environment`). Scores reproduce exactly only where these agree; elsewhere the same verdicts and "
        "every score inside its interval are what to expect (README, *Seeds, intervals and reproducibility*).",
        "",
        *_environment_table(sections),
    ]
    return "\n".join(lines) + "\n"


def _glance_table(sections: Sequence[Section]) -> list[str]:
    """The short claims table: one line per claim (a mapped claim once, with where it holds), its paper linked to
    that paper's full table below."""
    rows = [row for section in sections for row in section.targets]
    if not rows:
        return ["No study has been run with seeds and intervals yet."]
    maps = claim_maps(rows)
    lines, seen = [], set()
    for row in sorted(rows, key=lambda r: _paper_order(r.paper)):
        key = map_label(row) if row.axis is not None else row.target
        if key in seen:
            continue
        seen.add(key)
        verdict = maps[key] if row.axis is not None else f"**{row.labelled_verdict}**"
        lines.append([f"[{row.paper}](figures/REPORT.md#{_anchor(row.paper)})", key, verdict, row.protocol,
                      " / ".join(p.verdict for p in row.preconditions) or "none"])
    return _table(["paper", "claim", "verdict (where it holds)", "protocol", "preconditions"], lines)


def _paper_order(paper: str) -> int:
    """Position of a paper in the report (:data:`PAPERS` first, then the others)."""
    return PAPERS.index(paper) if paper in PAPERS else len(PAPERS)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def readme_section(report_text: str) -> str:
    """The README's results section: the report's claims-at-a-glance table and a link to the full report."""
    start, end = report_text.find(_GLANCE_START), report_text.find(_GLANCE_END)
    if start < 0 or end < start:
        raise ValueError(f"the report has no {_GLANCE_START} ... {_GLANCE_END} block: it was not written by "
                         f"fedmoe.report.render_report; regenerate it with `{REPORT_COMMAND}`")
    table = report_text[start + len(_GLANCE_START):end].strip("\n")
    return (f"<!-- pasted from figures/REPORT.md by `{README_COMMAND}`; do not edit between the markers -->\n"
            f"{table}\n\nEvery row with its interval, goal, seeds and command, and every method on the shared "
            "benchmark: [figures/REPORT.md](figures/REPORT.md).")


def replace_block(text: str, start_marker: str, end_marker: str, body: str, where: str) -> str:
    """``text`` with what lies between two marker lines replaced by ``body``; everything outside is kept byte for
    byte. Raises ValueError naming the markers and ``where`` they belong when one is missing or out of order."""
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"README.md needs the markers {start_marker} and {end_marker}, in that order, each on its "
                         f"own line, {where}")
    return f"{text[:start + len(start_marker)]}\n{body}\n{text[end:]}"


def sync_readme(readme_text: str, report_text: str) -> str:
    """``readme_text`` with the text between :data:`README_START` and :data:`README_END` replaced by the section."""
    return replace_block(readme_text, README_START, README_END, readme_section(report_text),
                         "where the generated results go (under a '## Results (generated)' heading)")


#: The README's block of measured notebook times (``reproduce/make_report.py --timings``).
TIMINGS_START, TIMINGS_END = "<!-- timings:start -->", "<!-- timings:end -->"


def timings_table(runs: Sequence[dict[str, dict]], machine: str) -> str:
    """A markdown table of executed notebooks' wall seconds, a column per scale, from the ``timings.json`` files
    ``reproduce/run_notebooks.py`` writes (one per executed scale: ``{notebook: {scale, wall_s, images, jobs}}``)."""
    cells = {(nb, t["scale"]): t for timings in runs for nb, t in timings.items()}
    scales = sorted({scale for _, scale in cells})
    rows = [[f"`{nb}`", *(f"{cells[nb, sc]['wall_s']:.0f} s ({cells[nb, sc]['images']} figures)"
                          if (nb, sc) in cells else "—" for sc in scales)]
            for nb in sorted({nb for nb, _ in cells})]
    jobs = sorted({t["jobs"] for t in cells.values()})
    return "\n".join([f"Measured on {machine}, JOBS={'/'.join(map(str, jobs))}: wall seconds of one papermill "
                      f"execution each, inline figures in brackets.", "", *_table(["notebook", *scales], rows)])
