"""Declared claims: every study's claims are well formed, rows derive their verdict from their goal, the runner
lists and runs a study, and the committed report's rows carry the verdict their own goal gives."""

import json
from pathlib import Path

import pytest

from fedmoe.report import GLOBAL, load_sections
from fedmoe.stats import NOT_TESTABLE, Goal, Interval
from fedmoe.studies.__main__ import main
from fedmoe.studies.claims import OURS, Claim, claims_by_key
from fedmoe.studies.registry import STUDIES, get_study, key_lines

ROOT = Path(__file__).resolve().parents[1]
PREMISE = Claim("premise", "X", "the premise holds", OURS, "points", "a - b", Goal(">", 0.0), GLOBAL)
CLAIM = Claim("lead", "X", "A beats B", "abstract", "points", "A - B, paired", Goal(">", 0.0), GLOBAL,
              preconditions=("premise",), axis="setting")


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_study_declares_well_formed_claims(name):
    claims = get_study(name).claims
    assert claims and all(c.source and c.metric and c.contrast for c in claims)
    assert len({c.key for c in claims}) == len(claims)


def test_a_claim_row_needs_its_preconditions_and_axis_point():
    ok = CLAIM.row(Interval(0.1, 0.05, 0.15, 3), command="cmd", seeds=3, run_scale=None, axis_value="heavy-tail",
                   where="heavy-tail", preconditions=(PREMISE.precondition(Interval(0.1, 0.05, 0.15, 3)),))
    assert ok.verdict == "MET" and ok.target == "A beats B (heavy-tail)" and ok.claim == "lead"
    assert ok.note == "A - B, paired" and ok.source == "abstract"
    failed = PREMISE.precondition(Interval(-0.1, -0.15, -0.05, 3))
    assert CLAIM.row(ok.measured, command="c", seeds=3, run_scale=None, axis_value="x",
                     preconditions=(failed,)).verdict == NOT_TESTABLE
    with pytest.raises(ValueError, match="needs its preconditions"):
        CLAIM.row(ok.measured, command="c", seeds=3, run_scale=None, axis_value="x")
    with pytest.raises(ValueError, match="axis_value is required"):
        CLAIM.row(ok.measured, command="c", seeds=3, run_scale=None, preconditions=(failed,))
    with pytest.raises(ValueError, match="not declared"):
        claims_by_key([CLAIM])
    with pytest.raises(ValueError, match="declared twice"):
        claims_by_key([PREMISE, PREMISE])
    with pytest.raises(ValueError, match="name its source"):
        Claim("k", "X", "s", "", "m", "c", Goal(">", 0.0), GLOBAL)


def test_key_lines_carry_interval_bound_and_verdict():
    row = CLAIM.row(Interval(0.1, 0.05, 0.15, 3), command="cmd", seeds=3, run_scale=None, axis_value="heavy-tail",
                    where="heavy-tail, 24 rounds", bound="lower bound",
                    preconditions=(PREMISE.precondition(Interval(0.1, 0.05, 0.15, 3)),))
    assert key_lines(row) == ["lead_heavy_tail_24_rounds 10.0000", "lead_heavy_tail_24_rounds_lo 5.0000",
                              "lead_heavy_tail_24_rounds_hi 15.0000", "lead_heavy_tail_24_rounds_bound lower_bound",
                              "lead_heavy_tail_24_rounds_verdict MET"]


def test_list_names_every_study_and_claim(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for study in STUDIES.values():
        assert f"{study.name}: " in out
        for claim in study.claims:
            assert f"{claim.key}: {claim.statement} [{claim.goal.text()}" in out


def test_a_study_takes_only_its_own_options(capsys):
    with pytest.raises(SystemExit):
        main(["quickstart", "--suites", "gsm"])
    assert "takes no --suites" in capsys.readouterr().err


def test_committed_rows_carry_the_verdict_their_goal_gives():
    """Every committed row was stored with the verdict its goal gives (text and judgement from one object), and
    re-judging it on load changes nothing."""
    folder = ROOT / "figures" / "report"
    loaded = {s.study: s for s in load_sections(folder)}
    for path in folder.glob("*.json"):
        stored = json.loads(path.read_text())["targets"]
        rows = loaded[path.stem].targets
        assert [r["verdict"] for r in stored] == [row.verdict for row in rows], path.name
        assert [r["goal_text"] for r in stored] == [row.goal.text() for row in rows], path.name
        assert all(row.source and row.claim for row in rows), path.name


def test_the_runner_runs_a_study_judges_it_and_writes_its_section(tmp_path, capsys):
    """The quickstart at smoke through ``python -m fedmoe.studies``: key lines per claim, one summary line each,
    and a section whose rows load back with their goal and protocol."""
    assert main(["quickstart", "--scale", "smoke", "--jobs", "2", "--results", str(tmp_path / "runs"),
                 "--section", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    for claim in get_study("quickstart").claims:
        key = claim.key.replace("-", "_")
        assert f"\n{key}_lo " in out and f"\n{key}_verdict " in out
        assert f"(smoke: plumbing check) {claim.statement}:" in out
    (section,) = load_sections(tmp_path / "report")
    assert section.study == "quickstart" and [r.claim for r in section.targets] == ["fedit-beats-local",
                                                                                  "fedit-near-central"]
    assert {r.protocol for r in section.targets} == {GLOBAL} and section.head_to_head
