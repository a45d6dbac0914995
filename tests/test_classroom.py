"""The classroom scale (between smoke and default) resolves for every config and study, and verdicts measured at a
scale that is no evidence (smoke: a plumbing check; classroom) are labelled so wherever a row is printed or saved."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedmoe.config import SCALE_CAVEATS, SCALE_PRESETS, SCALES, load_config
from fedmoe.experiment import check_config
from fedmoe.moe.zoo import SCALES as ZOO_SCALES
from fedmoe.report import TargetRow, load_sections, render_report, save_section
from fedmoe.stats import MET, Goal, Interval
from fedmoe.studies import fftmoe, flame, flux, quickstart
from fedmoe.studies.evidence import compare, scale_of
from fedmoe.studies.grid import SEEDS, print_scale_banner, seeds_for

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "reproduce" / "configs").glob("*.yaml"))
STUDY_NOTEBOOKS = sorted([ROOT / "notebooks" / "00_quickstart.ipynb",
                          *(p for d in ("flux", "flame", "fftmoe") for p in (ROOT / "notebooks" / d).glob("*.ipynb"))])


def test_every_scale_has_a_preset_seeds_and_sits_in_order():
    assert SCALES.index("smoke") < SCALES.index("classroom") < SCALES.index("default")
    assert set(SCALE_PRESETS) == set(SEEDS) == set(SCALES)
    assert len(seeds_for("classroom")) >= 3  # two seeds give a Student-t interval of 12.7 standard errors
    assert set(SCALE_CAVEATS) == {"smoke", "classroom"}


def test_classroom_zoo_model_sits_between_smoke_and_default():
    smoke, classroom, default = (ZOO_SCALES[s] for s in ("smoke", "classroom", "default"))
    assert classroom.n_entities == default.n_entities  # the benchmark asks about the default world's entities
    tokens = {name: s.steps * s.batch_size * s.seq_len for name, s in (("smoke", smoke), ("classroom", classroom),
                                                                     ("default", default))}
    assert tokens["smoke"] < tokens["classroom"] < tokens["default"]
    assert smoke.hidden_size < classroom.hidden_size < default.hidden_size


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_classroom_resolves_for_every_config_file(path):
    cfg = check_config(load_config(path, scale="classroom"))
    assert cfg.scale == "classroom" and cfg.model.scale == "classroom"


def test_the_generic_classroom_preset_is_the_quickstarts_block():
    """A run without a config file at classroom gets the sizes the quickstart was timed with."""
    block = yaml.safe_load((ROOT / "reproduce" / "configs" / "quickstart.yaml").read_text())["scales"]["classroom"]
    flat = {f"{section}.{key}": value for section, keys in block.items() for key, value in keys.items()}
    assert flat == SCALE_PRESETS["classroom"]
    assert check_config(load_config(None, scale="classroom")).model.scale == "classroom"


def test_every_study_builds_its_configs_at_classroom():
    seeds = seeds_for("classroom")
    built = [c for runs in quickstart.configs("classroom", seeds).values() for c in runs]
    built += [flux.flux_config(m, s, scale="classroom") for m in flux.METHODS for s in flux.SUITES]
    built += [flame.make_config(m, s, scale="classroom") for m in flame.METHODS for s in flame.SETTINGS]
    built += [c for runs in flame.long_configs(scale="classroom", seeds=seeds).values() for c in runs]
    built += [c for runs in fftmoe.configs("classroom", seeds).values() for c in runs]
    built += [c for runs in fftmoe.long_configs("classroom", seeds).values() for c in runs]
    for cfg in built:
        check_config(cfg)
        assert cfg.scale == "classroom"


def _row(run_scale):
    return TargetRow(paper="quickstart", target="FedIT beats local-only training",
                     measured=Interval(0.1, 0.05, 0.15, 3), goal=Goal(">", 0.0), command="cmd", seeds=3,
                     run_scale=run_scale)


def test_smoke_and_classroom_verdicts_are_labelled_in_summary_and_report(tmp_path):
    smoke, classroom, default, unknown = _row("smoke"), _row("classroom"), _row("default"), _row(None)
    assert smoke.verdict == MET  # the word stays machine-readable
    assert smoke.labelled_verdict == "MET (smoke: plumbing check)"
    assert smoke.summary().startswith("MET (smoke: plumbing check) FedIT beats local-only training: 10.0")
    assert classroom.summary().startswith("MET (classroom scale) ")
    assert default.summary().startswith("MET        FedIT") and unknown.labelled_verdict == MET
    save_section(tmp_path, "quickstart", [smoke, default], environment={})
    (section,) = load_sections(tmp_path)
    assert [r.run_scale for r in section.targets] == ["smoke", "default"]
    report = render_report([section])
    assert "| **MET (smoke: plumbing check)** |" in report and "| **MET** |" in report
    with pytest.raises(ValueError, match="run_scale must be one of"):
        _row("tiny")


def _scaled_run(fake_run, folder, seed, items, scale):
    fake_run(folder, seed, items)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "scale": scale}))
    return folder


def test_study_rows_carry_the_scale_of_their_runs(tmp_path, fake_run):
    items = {"fedit": [1, 1, 0, 1], "central": [1, 1, 1, 1], "local": [0, 0, 1, 0]}
    runs = {m: [_scaled_run(fake_run, tmp_path / f"{m}{s}", s, [[0] * 4, items[m]], "smoke") for s in range(2)]
            for m in items}
    rows = quickstart.targets(runs)
    assert [r.run_scale for r in rows] == ["smoke", "smoke"]
    assert all("(smoke: plumbing check)" in r.summary() for r in rows)
    assert compare(runs["fedit"], runs["local"]).run_scale == "smoke"
    assert scale_of(runs) == "smoke" and scale_of([fake_run(tmp_path / "hand", 0, [[1]])]) is None
    other = [_scaled_run(fake_run, tmp_path / "d", 0, [[1, 1, 1, 1]], "default")]
    with pytest.raises(ValueError, match="several scales"):
        scale_of([*runs["fedit"], *other])


def test_scale_banner_is_one_line_at_smoke_and_classroom_only(capsys):
    print_scale_banner("smoke")
    smoke = capsys.readouterr().out
    assert smoke.count("\n") == 1 and "plumbing check" in smoke and "not evidence" in smoke
    print_scale_banner("classroom")
    assert capsys.readouterr().out.count("\n") == 1
    for scale in ("default", "paper"):
        print_scale_banner(scale)
        assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="unknown scale"):
        print_scale_banner("huge")


@pytest.mark.parametrize("path", STUDY_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_study_notebook_prints_the_scale_banner_in_its_setup(path):
    """Through the one setup helper (``grid.notebook_setup`` prints the banner), right after the parameters."""
    import nbformat

    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    setup = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])) + 1
    assert "= notebook_setup(scale, seeds, out_dir, figures_dir, report_dir" in cells[setup].source


def test_every_scale_choice_reads_the_config_scales():
    """``--scale`` choices come from :data:`fedmoe.config.SCALES`, never a typed list (zoo-scale options such as
    reproduce/pretrain_zoo.py's take any zoo scale name and list no choices)."""
    scripts = [ROOT / "fedmoe" / "cli.py", ROOT / "fedmoe" / "studies" / "__main__.py",
               *sorted((ROOT / "reproduce").glob("*.py"))]
    options = [(path.name, line.strip()) for path in scripts for line in path.read_text().splitlines()
               if '"--scale"' in line and "choices=" in line]
    assert len(options) >= 6
    for name, line in options:
        assert "SCALES" in line and 'choices=["' not in line, f"{name}: {line}"


@pytest.mark.slow
def test_classroom_quickstart_learns_from_an_empty_cache(tmp_path):
    """The quickstart at classroom, zoo pretraining included: FedIT's final score lifts clearly over the base
    model's round-0 score (paired over seeds and test items, lower bound above 10 points)."""
    script = (
        "import sys\n"
        "from fedmoe.results import load_rounds\n"
        "from fedmoe.stats import paired_difference\n"
        "from fedmoe.studies import quickstart as qs\n"
        "from fedmoe.studies.grid import seeds_for\n"
        "import numpy as np\n"
        "if __name__ == '__main__':\n"
        "    runs = qs.run_study('classroom', seeds_for('classroom'), out_dir=sys.argv[1], progress=False)\n"
        "    rounds = [load_rounds(f) for f in runs['fedit']]\n"
        "    lift = paired_difference(np.array([r[-1]['item_scores'] for r in rounds]),\n"
        "                             np.array([r[0]['item_scores'] for r in rounds]))\n"
        "    print(lift.lo)\n")
    env = {**os.environ, "FEDMOE_CACHE": str(tmp_path / "zoo"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "runs")], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert float(out.strip().splitlines()[-1]) > 0.10
