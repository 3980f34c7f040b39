"""`longrope report`: report.md and the stages' PNGs, read from a run (also a running one)."""

import json
import re

import optuna
import pytest
from search_helpers import run_small

from longrope.runs import report as report_mod
from longrope.runs.status import render_status
from longrope.runs.vocab import STAGE
from longrope.search.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run(tmp_path):
    """A finished long-256 and short-32, and a long-512 that has started with nothing evaluated."""
    run, _ = run_small(tmp_path, short="[32]", iterations=2)
    empty = optuna.create_study(study_name="long-512", storage=run.storage())
    empty.set_user_attr(STAGE, {"kind": "long", "length": 512, "budget": 24, "sampler": "longrope",
                                "critical_dim": None, "mscale": 1.2})
    return run


def _rows(page: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header line starts with `header`."""
    lines = page.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _section(page: str, name: str) -> str:
    return re.split(r"\n## ", page.split(f"\n## {name}\n", 1)[1])[0]


def _check_pngs(folder, names):
    for name in names:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000, name


def test_report_writes_its_files_for_a_small_run(run, capsys):
    assert "report: longrope report" in render_status(run, False)
    assert main(["report", str(run.path)]) == 0
    folder = run.path / "report"
    assert capsys.readouterr().out.strip() == f"report: {folder / 'report.md'}"
    plots = [f"stage-{s}-{k}.png" for s in ("long-256", "short-32") for k in ("history", "lambda")]
    assert sorted(p.name for p in folder.iterdir()) == sorted(["report.md", *plots])  # none for long-512
    _check_pngs(folder, plots)
    page = (folder / "report.md").read_text()

    bests = {f"{kind}-{n}": rec for kind in ("long", "short") for n, rec in run.bests(kind).items()}
    assert set(bests) == {"long-256", "short-32"}
    rows = {r[0]: r for r in _rows(page, "| stage | evaluations")}
    assert list(rows) == ["long-256", "long-512", "short-32"]  # the order of `status`
    for name, rec in bests.items():
        _, evals, pruned, failed, best, n_hat, mscale, trial = rows[name]
        assert float(best) == pytest.approx(rec.search_ppl, rel=1e-5)
        assert (int(n_hat), int(trial), evals) == (rec.n_hat, rec.trial, "24/24")
        assert float(mscale) == pytest.approx(rec.mscale, rel=1e-5)
        # the best of the study's evaluations, as the search saw it
        study = optuna.load_study(study_name=name, storage=run.storage())
        assert rec.search_ppl == min(t.value for t in study.trials if t.state.name == "COMPLETE")
        section = _section(page, name)
        assert f"](stage-{name}-history.png)" in section and f"](stage-{name}-lambda.png)" in section
        lam = _rows(section, "| i | best |")
        assert [int(r[0]) for r in lam] == list(range(len(rec.lambdas)))
        assert [float(r[1]) for r in lam] == pytest.approx(rec.lambdas, rel=1e-5)
        seeds = _rows(section, "| i | best |")[0]
        assert len(seeds) == (6 if name.startswith("long") else 3)  # pi, ntk, yarn, dynamic_ntk | none
        assert f"(trial {rec.trial}, the best of {rec.evals} evaluations)" in section
    assert rows["long-512"][1:5] == ["0/24", "0", "0", "-"]
    assert "No complete evaluation yet" in _section(page, "long-512")

    heldout = {r[0]: r for r in _rows(page, "| stage | search ppl | held-out ppl")}
    assert {n: float(r[2]) for n, r in heldout.items()} == pytest.approx(
        {n: rec.heldout_ppl for n, rec in bests.items()}, rel=1e-5)
    assert "longrope eval" in page and "--split heldout" in page

    assert f"report: {folder / 'report.md'}" in render_status(run, False)
    assert json.loads(render_status(run, True))["report"] == str(folder / "report.md")


def test_report_to_another_folder_leaves_the_run_as_it_was(run, tmp_path):
    before = sorted(p.relative_to(run.path) for p in run.path.rglob("*"))
    out = tmp_path / "elsewhere" / "r"
    assert main(["report", str(run.path), "-o", str(out)]) == 0
    assert sorted(p.relative_to(run.path) for p in run.path.rglob("*")) == before
    _check_pngs(out, ["stage-long-256-history.png", "stage-short-32-lambda.png"])
    assert "## long-256" in (out / "report.md").read_text()


def test_a_running_run_is_reported_without_its_lock(run, tmp_path):
    with run.lock():  # a driver holds the run
        assert main(["report", str(run.path), "-o", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").is_file()


def test_an_interrupted_report_leaves_no_page_and_no_temp_file(run, tmp_path, monkeypatch):
    calls = []

    def dies(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return b"\x89PNG\r\n\x1a\nstub"

    monkeypatch.setattr(report_mod, "plot_lambda", dies)
    out = tmp_path / "r"
    assert main(["report", str(run.path), "-o", str(out)]) == 130
    assert not (out / "report.md").exists()  # written last: it never links a missing plot
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not a run directory" in err


@pytest.mark.parametrize("data", [
    {},
    {"streaming": True, "search_docs": 8, "heldout_docs": 4, "split_seed": 3},
    {"streaming": True, "stream_docs": 40, "heldout_docs": 6, "text_column": "body", "per_line": True},
])
def test_the_reports_eval_line_scores_the_runs_own_heldout_documents(data):
    """The split is drawn over the documents read; streamed, that is the run's stream count, and
    eval's own default (2 x --samples) could deal the run's search documents into held-out. The
    report's eval command carries what fixes the pool: count, split seed, source options."""
    import shlex

    from longrope.objectives.specs import DataSpec
    from longrope.runs.report import eval_data_flags
    from longrope.search.cli import build_parser

    run = DataSpec(**data)
    args = build_parser().parse_args(["eval", "--lengths", "256", *shlex.split(eval_data_flags({"data": vars(run)}))])
    seen = DataSpec(text_column=args.text_column, split=args.data_split, config=args.data_config,
                    per_line=args.per_line, streaming=args.streaming, stream_docs=args.stream_docs,
                    search_docs=args.samples, heldout_docs=args.samples, split_seed=args.split_seed)
    assert (seen.stream_count() if run.streaming else None) == (run.stream_count() if run.streaming else None)
    for key in ("heldout_docs", "split_seed", "text_column", "per_line", "streaming", "split", "config"):
        assert getattr(seen, key) == getattr(run, key), key


def test_a_report_leaves_the_temp_files_of_one_writing_beside_it(run, tmp_path):
    """Two reports at once into one folder: the first's cleanup of temp files left by killed
    writers removed the other's live ones, whose rename then failed (exit 2)."""
    import os
    import subprocess

    out = tmp_path / "r"
    out.mkdir()
    live = subprocess.Popen(["sleep", "30"])
    try:
        theirs = out / f".report.md.{live.pid}.tmp"  # another report, mid-write
        theirs.write_text("half a page")
        dead = subprocess.Popen(["true"])
        dead.wait()
        killed = out / f".stage-long-256-history.png.{dead.pid}.tmp"  # a report killed mid-write
        killed.write_text("half a plot")
        assert main(["report", str(run.path), "-o", str(out)]) == 0
        assert theirs.exists() and not killed.exists()
        os.utime(theirs, (0, 0))  # an hour old: a writer on another host that died
        assert main(["report", str(run.path), "-o", str(out)]) == 0
        assert not theirs.exists()
    finally:
        live.kill()


def test_the_commands_the_report_and_status_print_can_be_pasted_back(tmp_path):
    """A run folder with a space in its name: `longrope export /x/run a` took `a` for an unknown
    argument, and the eval line's --methods split in two; a needle search's eval line scored plain
    perplexity (no --task needle)."""
    import shlex

    from search_helpers import small_cfg

    from longrope.runs import Run
    from longrope.runs.report import eval_data_flags
    from longrope.search.cli import build_parser

    (tmp_path / "c.toml").write_text(small_cfg(iterations=1)[1])
    run_dir = tmp_path / "run a"
    assert main(["search", str(tmp_path / "c.toml"), "--run-dir", str(run_dir), "--quiet", "--max-evals", "4"]) == 0
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report" / "report.md").read_text()
    block = page.split("```\n")[-2].strip().splitlines()  # the export and eval lines
    export, evaluate = (build_parser().parse_args(shlex.split(line)[1:]) for line in block)
    assert export.run_dir == str(run_dir)
    assert evaluate.methods.split(",")[-1] == f"{run_dir}/export/longrope-256.json"
    status = render_status(Run.open(run_dir), False)
    line = next(ln for ln in status.splitlines() if ln.startswith("report:"))
    assert shlex.split(line.split("refresh: ")[1].rstrip(")"))[2] == str(run_dir)
    needle = build_parser().parse_args(["eval", "--lengths", "256", *shlex.split(
        eval_data_flags({"data": {}, "objective": {"kind": "needle", "depths": 4}}))])
    assert (needle.task, needle.depths) == ("needle", 4)


def test_a_long_stage_shows_the_best_it_was_bred_from_after_a_raised_budget(tmp_path):
    """A resume that raised the budget improved long-256 after long-512 had begun from its old
    best (kept in the study, stagecheck.bred_from); the report drew long-256's new best as the seed."""
    from search_helpers import small_cfg

    from longrope.runs import Run
    from longrope.runs.vocab import BRED_FROM

    (tmp_path / "c.toml").write_text(small_cfg(iterations=2)[1].replace("targets = [256]", "targets = [256, 512]"))
    run_dir = tmp_path / "r"
    assert main(["search", str(tmp_path / "c.toml"), "--run-dir", str(run_dir), "--quiet", "--max-evals", "5"]) == 0
    assert main(["resume", str(run_dir), "--quiet", "--max-evals", "24"]) == 0
    run = Run.open(run_dir)
    study = next(s for s in run.studies() if s.study_name == "long-512")
    bred = tuple(study.user_attrs[BRED_FROM]["lambdas"])
    assert bred != run.best("long", 256).lambdas  # the raised budget found a better long-256
    assert main(["report", str(run_dir)]) == 0
    section = _section((run_dir / "report" / "report.md").read_text(), "long-512")
    header = next(ln for ln in section.splitlines() if ln.startswith("| i | best |"))
    col = [c.strip() for c in header.strip("|").split("|")].index("best of long-256")
    assert tuple(float(r[col]) for r in _rows(section, "| i | best |")) == pytest.approx(bred, abs=5e-3)


@pytest.mark.parametrize("values, labels", [
    ((3.2, 40.0), ["5", "10", "20"]),
    ((12.0, 3e7), ["10", "100", "1000", "10000", "100000", "1e+06", "1e+07"]),
])
def test_log_axis_labels_read_as_numbers_at_any_scale(values, labels):
    """The history's log axis: a shared offset once labelled 10 .. 1e7 as 0.000 .. 5.000 (x 1e7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(values)
    report_mod._log_y(ax, list(values), 10)
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    shown = [t.get_text() for t, v in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True) if lo <= v <= hi]
    plt.close(fig)
    assert ax.get_yscale() == "log" and ax.yaxis.get_offset_text().get_text() == ""
    assert shown == labels


def test_fine_tunes_are_listed_by_length(run):
    """ft-128 was listed above ft-64 (the names sorted as strings)."""
    for n in (1024, 64, 128):
        (run.path / "finetune" / f"ft-{n}").mkdir(parents=True)
        (run.path / "finetune" / f"ft-{n}" / "training.json").write_text(
            json.dumps({"length": n, "steps": 10, "final_loss": 1.5}))
    page = "\n".join(report_mod._heldout(run, []))
    assert [r[0] for r in _rows(page, "| fine-tune | steps")] == ["ft-64", "ft-128", "ft-1024"]


@pytest.mark.parametrize("objective", [{"kind": "needle", "depths": 4, "per_depth": 1, "seed": 7},
                                       {"kind": "needle", "per_depth": 3}, {"kind": "needle"}])
def test_the_reports_eval_line_samples_a_needle_run_as_it_did(objective, monkeypatch):
    """eval drew --samples samples per depth with key seed 0, whatever the run's objective.per_depth
    and objective.seed: the printed command scored other samples (1.1625 for a held-out 1.2069)."""
    import shlex

    from longrope.objectives import evaluate
    from longrope.objectives.specs import TaskSpec
    from longrope.runs.report import eval_data_flags

    class Seen(Exception):
        pass

    def capture(spec, *a, **kw):
        raise Seen(spec)

    monkeypatch.setattr(evaluate, "run_eval", capture)
    flags = shlex.split(eval_data_flags({"data": {"heldout_docs": 2}, "objective": objective}))
    with pytest.raises(Seen) as seen:
        main(["eval", "--model", "synthetic", "--lengths", "256", *flags])
    spec = seen.value.args[0]
    assert spec.task == TaskSpec(**objective) and spec.data.heldout_docs == 2
