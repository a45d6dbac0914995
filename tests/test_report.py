"""fedmoe.report: rendering, section round trip, README sync, and the committed README against the committed report."""

import importlib.util
import math
from pathlib import Path

import pytest

from fedmoe.report import (
    DEPLOYED,
    README_END,
    README_START,
    HeadToHeadRow,
    Precondition,
    Section,
    TargetRow,
    load_sections,
    readme_section,
    render_report,
    save_section,
    sync_readme,
)
from fedmoe.stats import FAILED, LOWER_BOUND, MET, NOT_TESTABLE, UNRESOLVED, Goal, Interval, judge

ROOT = Path(__file__).resolve().parents[1]

SPEEDUP = TargetRow(paper="FLUX", target="time-to-accuracy speedup vs best baseline",
                    measured=Interval(2.31, 2.05, 2.60, n=3), goal=Goal(">", 2.0, "ratio", 2),
                    command="python -m fedmoe.studies flux --seeds 0,1,2", seeds=3, source="abstract")
PARITY = TargetRow(paper="FLUX", target="final score minus FMD's", measured=Interval(-0.012, -0.041, 0.017, n=3),
                   goal=Goal(">", -0.02), command="python -m fedmoe.studies flux | tail -4",
                   seeds=3, note="the interval straddles the goal")
PREMISE = Precondition("rank compression costs FedIT", Interval(0.05, 0.02, 0.08, n=3), Goal(">", 0.0))
LEAD = TargetRow(paper="FLAME", target="FLAME minus best baseline, heavy-tail",
                 measured=Interval(-0.06, -0.09, -0.03, n=3), goal=Goal(">", 0.0),
                 command="python -m fedmoe.studies flame", protocol=DEPLOYED, preconditions=(PREMISE,))
ROWS = (HeadToHeadRow("flame", Interval(0.40, 0.37, 0.43, n=3), {"trainable_params": 123456, "bytes_up": 1.5e6},
                      "dolly · tiny-olmoe"),
        HeadToHeadRow("fedit", Interval(0.45, 0.42, 0.48, n=3), {"trainable_params": 98304}, "gsm · tiny-mixtral"),
        HeadToHeadRow("one-seed", Interval(0.50, math.nan, math.nan, n=1), benchmark="gsm · tiny-mixtral"),
        HeadToHeadRow("old", Interval(0.30, 0.20, 0.40, n=3)))
SECTIONS = [Section("flux", (SPEEDUP, PARITY), ROWS[1:]), Section("flame", (LEAD,), ROWS[:1])]


def test_report_lists_every_target_with_interval_verdict_and_command():
    text = render_report(SECTIONS)
    assert "| time-to-accuracy speedup vs best baseline | abstract | global | 2.31 ± 0.28 [2.05, 2.60] | > 2.00x | " \
           "**MET** | none | 3 | `python -m fedmoe.studies flux --seeds 0,1,2` |" in text
    assert "| final score minus FMD's | — | global | -1.2 ± 2.9 [-4.1, 1.7] | > -2.0 points | **UNRESOLVED** |" in text
    assert "| 3 | `python -m fedmoe.studies flux \\| tail -4` |" in text  # a pipe cannot end the cell
    assert "- final score minus FMD's: the interval straddles the goal" in text
    assert ("| FLAME minus best baseline, heavy-tail | — | deployed | -6.0 ± 3.0 [-9.0, -3.0] | > +0.0 points | "
            "**FAILED** | MET | — |") in text
    assert ("- FLAME minus best baseline, heavy-tail: precondition rank compression costs FedIT: 5.0 ± 3.0 "
            "[2.0, 8.0] (> +0.0 points) MET") in text
    assert "### FFT-MoE\n\nNot yet measured with seeds." in text
    assert text.index("### FLUX") < text.index("### FFT-MoE") < text.index("### FLAME")
    assert "studies: `flame`, `flux`" in text


def test_head_to_head_has_one_table_per_benchmark_sorted_by_score():
    text = render_report([*SECTIONS, Section("legacy", (), ROWS[3:])])
    table = text[text.index("## Head-to-head"):]
    assert table.index("### benchmark not recorded") < table.index("### dolly · tiny-olmoe") \
        < table.index("### gsm · tiny-mixtral")
    dolly = table[table.index("### dolly"):table.index("### gsm")]
    gsm = table[table.index("### gsm"):]
    assert "| method | score | study | bytes_up | trainable_params |" in dolly
    assert "| flame | 40.0 ± 3.0 [37.0, 43.0] | flame | 1.5e+06 | 123,456 |" in dolly and "fedit" not in dolly
    assert "| method | score | study | trainable_params |" in gsm  # only the columns this benchmark's rows have
    assert "| one-seed | 50.0 (n=1, no interval) | flux | — |" in gsm
    assert "| fedit | 45.0 ± 3.0 [42.0, 48.0] | flux | 98,304 |" in gsm
    assert gsm.index("one-seed") < gsm.index("fedit")
    assert "| old | 30.0 ± 10.0 [20.0, 40.0] | legacy |" in table


def test_report_is_deterministic_whatever_the_section_order():
    assert render_report(SECTIONS) == render_report(SECTIONS[::-1])


def test_empty_report_says_nothing_is_measured():
    text = render_report([])
    assert "No study has been run with seeds and intervals yet." in text
    assert text.count("Not yet measured with seeds.") == 3
    assert "No method has been measured on a benchmark with seeds yet." in text


def test_sections_round_trip_through_json(tmp_path):
    for section in SECTIONS:
        path = save_section(tmp_path, section.study, section.targets, section.head_to_head)
        assert path == tmp_path / f"{section.study}.json"
    loaded = load_sections(tmp_path)
    assert [s.study for s in loaded] == ["flame", "flux"]
    assert loaded == sorted(SECTIONS, key=lambda s: s.study)  # nan bounds come back as nan, not None
    assert math.isnan(loaded[1].head_to_head[1].score.lo)
    assert render_report(loaded) == render_report(SECTIONS)


def test_bad_sections_and_rows_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="sections folder .*missing not found"):
        load_sections(tmp_path / "missing")
    with pytest.raises(ValueError, match="study name 'FLUX run'"):
        save_section(tmp_path, "FLUX run")
    (tmp_path / "broken.json").write_text('{"study": "broken"}')
    with pytest.raises(ValueError, match="broken.json is not a report section"):
        load_sections(tmp_path)
    with pytest.raises(TypeError, match="goal must be a fedmoe.stats.Goal"):
        TargetRow("FLUX", "x", Interval(1, 0, 2, 3), ">= 1", "cmd")
    with pytest.raises(ValueError, match="protocol must be one of"):
        TargetRow("FLUX", "x", Interval(1, 0, 2, 3), Goal(">", 0.0), "cmd", protocol="local")


def test_sync_readme_replaces_only_between_the_markers():
    report = render_report(SECTIONS)
    readme = f"# title\n\nbefore\n{README_START}\nstale typed numbers\n{README_END}\nafter\n"
    synced = sync_readme(readme, report)
    assert synced.startswith(f"# title\n\nbefore\n{README_START}\n")
    assert synced.endswith(f"\n{README_END}\nafter\n")
    assert "stale typed numbers" not in synced
    assert readme_section(report) in synced
    assert "**MET**" in synced and "## Head-to-head" not in synced and "# Results report" not in synced
    assert "| [FLUX](figures/REPORT.md#flux) | final score minus FMD's | **UNRESOLVED** | global | none |" in synced
    assert sync_readme(synced, report) == synced  # idempotent


@pytest.mark.parametrize("readme", ["no markers at all\n", f"only {README_START}\n",
                                    f"{README_END}\nreversed\n{README_START}\n"])
def test_sync_readme_without_markers_says_where_to_put_them(readme):
    with pytest.raises(ValueError, match="README.md needs the markers <!-- report:start --> and <!-- report:end -->"):
        sync_readme(readme, render_report([]))


def test_committed_readme_section_matches_the_committed_report():
    readme = (ROOT / "README.md").read_text()
    report = (ROOT / "figures" / "REPORT.md").read_text()
    assert readme_section(report) in readme
    assert sync_readme(readme, report) == readme, \
        "README.md's results section is stale: run `python reproduce/make_report.py --readme-only`"


def test_committed_report_is_what_the_committed_sections_render():
    """figures/REPORT.md is generated from figures/report/*.json; a hand edit or a lost section shows here."""
    sections = load_sections(ROOT / "figures" / "report")
    assert {s.study for s in sections} >= {"flux", "fftmoe", "flame", "quickstart"}
    assert render_report(sections) == (ROOT / "figures" / "REPORT.md").read_text(), \
        "figures/REPORT.md differs from its sections: run `python reproduce/make_report.py`"


def _make_report():
    """The reproduce/make_report.py module (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("make_report", ROOT / "reproduce" / "make_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_report_writes_checks_and_repastes(tmp_path, capsys):
    main = _make_report().main
    sections, report, readme = tmp_path / "sections", tmp_path / "REPORT.md", tmp_path / "README.md"
    save_section(sections, "flux", SECTIONS[0].targets, SECTIONS[0].head_to_head)
    readme.write_text(f"intro\n{README_START}\n{README_END}\nrest\n")
    paths = ["--report", str(report), "--readme", str(readme)]
    assert main(["--sections", str(sections), *paths]) == 0
    assert report.read_text() == render_report(load_sections(sections))
    assert main(["--check", *paths]) == 0
    readme.write_text(readme.read_text().replace("**MET**", "**FAILED**"))  # a hand edit
    capsys.readouterr()
    assert main(["--check", *paths]) == 1
    assert "differs from REPORT.md; fix it with `python reproduce/make_report.py --readme-only`" \
        in capsys.readouterr().err
    assert main(["--readme-only", *paths]) == 0
    assert main(["--check", *paths]) == 0
    assert main(["--sections", str(tmp_path / "missing"), *paths]) == 1


def test_saved_figures_are_byte_reproducible(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedmoe.plots import save_figure

    def draw(folder):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [0.3, 0.5, 0.4])
        paths = save_figure(fig, folder / "curve")
        plt.close(fig)
        return [p.read_bytes() for p in paths]

    assert draw(tmp_path / "a") == draw(tmp_path / "b")  # no creation date: re-runs leave git clean


def test_target_row_summary_prints_the_interval_in_the_row_units():
    assert PARITY.summary() == "UNRESOLVED final score minus FMD's: -1.2 ± 2.9 [-4.1, 1.7] (goal > -2.0 points)"
    assert SPEEDUP.summary() == ("MET        time-to-accuracy speedup vs best baseline: 2.31 ± 0.28 [2.05, 2.60] "
                                 "(goal > 2.00x)")


GOALS = [Goal(">", 0.0), Goal(">", -0.05), Goal("<", 0.05, "percent", 2), Goal(">", 4.75, "ratio", 2),
         Goal("<", 0.02, "value", 2)]


@pytest.mark.parametrize("goal", GOALS, ids=lambda g: g.text())
def test_every_goal_renders_and_judges_its_boundary_the_same_way(goal):
    t, above = goal.threshold, goal.higher_is_better
    right, wrong = (Interval(t + 2, t + 1, t + 3, 3), Interval(t - 2, t - 3, t - 1, 3))[:: 1 if above else -1]
    assert goal.judge(right) == MET and goal.judge(wrong) == FAILED
    touching = [Interval(t + 1, t, t + 2, 3), Interval(t - 1, t - 2, t, 3), Interval(t, t, t, 3)]
    assert {goal.judge(iv) for iv in touching} == {UNRESOLVED}  # an interval touching the threshold decides nothing
    assert goal.judge(Interval(t, float("nan"), float("nan"), 1)) == UNRESOLVED
    assert goal.text().startswith(goal.comparator + " ")
    shown = float(goal.text()[2:].rstrip("xpoints% "))
    assert shown == pytest.approx(t * goal.scale)  # the text shows the very threshold it judges against


def test_bounds_and_preconditions_decide_only_what_they_allow():
    goal = Goal(">", 2.0, "ratio")
    low, high = Interval(1.2, 1.0, 1.5, 3), Interval(3.0, 2.5, 3.5, 3)
    assert goal.judge(low, LOWER_BOUND) == UNRESOLVED and goal.judge(high, LOWER_BOUND) == MET
    assert goal.judge(low, "upper bound") == FAILED and goal.judge(high, "upper bound") == UNRESOLVED
    assert goal.judge(high, "unknown") == UNRESOLVED
    assert judge(high, goal, preconditions=(MET, FAILED)) == NOT_TESTABLE
    assert judge(high, goal, preconditions=(UNRESOLVED,)) == MET
    failed = Precondition("premise", Interval(-0.05, -0.08, -0.02, 3), Goal(">", 0.0))
    row = TargetRow("FLAME", "lead", high, goal, "cmd", preconditions=(failed,))
    assert row.verdict == NOT_TESTABLE and "| **NOT TESTABLE** | FAILED |" in render_report([Section("x", (row,))])
    with pytest.raises(ValueError, match="comparator must be '>' or '<'"):
        Goal(">=", 0.0)
    with pytest.raises(ValueError, match="would read < \\+0.0: give enough digits"):
        Goal("<", 0.02, "value")


def test_timings_table_has_a_column_per_scale_and_a_row_per_notebook():
    from fedmoe.report import TIMINGS_END, TIMINGS_START, replace_block, timings_table

    smoke = {"learn/01.ipynb": {"scale": "smoke", "wall_s": 41.26, "images": 2, "jobs": 2},
             "00_quickstart.ipynb": {"scale": "smoke", "wall_s": 39.0, "images": 2, "jobs": 2}}
    default = {"00_quickstart.ipynb": {"scale": "default", "wall_s": 3105.0, "images": 2, "jobs": 2}}
    table = timings_table([smoke, default], "x86_64 AVX2, 2 cores")
    assert "| notebook | default | smoke |" in table
    assert "| `00_quickstart.ipynb` | 3105 s (2 figures) | 39 s (2 figures) |" in table
    assert "| `learn/01.ipynb` | — | 41 s (2 figures) |" in table
    readme = f"intro\n{TIMINGS_START}\nold\n{TIMINGS_END}\nrest\n"
    assert replace_block(readme, TIMINGS_START, TIMINGS_END, table, "here") == \
        f"intro\n{TIMINGS_START}\n{table}\n{TIMINGS_END}\nrest\n"
    with pytest.raises(ValueError, match="needs the markers"):
        replace_block("no markers", TIMINGS_START, TIMINGS_END, table, "here")
