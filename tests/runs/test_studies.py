"""Run.studies(): the run's studies from its own storage (journal or the config's RDB URL)."""

import json

import pytest
from search_helpers import ctrl_c_after, run_small, small_cfg

from longrope.runs import Run
from longrope.runs.status import counted_trials, evaluations, stage_summaries
from longrope.search import config
from longrope.search.driver import Driver


def test_studies_are_the_stages_in_order_and_evaluations_count_them(tmp_path):
    run, _ = run_small(tmp_path, short="[32]", iterations=1)
    studies = run.studies()
    assert [s.study_name for s in studies] == ["long-256", "short-32"]
    assert [len(counted_trials(s)) for s in studies] == [18, 18]
    assert evaluations(run) == sum(s["evals"] for s in stage_summaries(run)) == 36


def test_studies_come_from_the_configured_rdb_storage(tmp_path):
    cfg, _ = small_cfg(iterations=0)
    cfg.search.storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    run = Run.create(tmp_path / "rdb", config.dumps(cfg))
    Driver(cfg, run, progress=False).run_all()
    assert run.journal.read_bytes() == b""
    assert [s.study_name for s in run.studies()] == ["long-256"] and evaluations(run) == 12


def test_status_of_a_sampler_without_generations_prints_a_dash(tmp_path):
    from longrope.runs.status import render_status

    run, _ = run_small(tmp_path, sampler="tpe", iterations=0)
    line = render_status(run, False).splitlines()[2]
    assert "long-256: 12/12 evals" in line and "generation -," in line, line


def test_status_of_a_stage_created_but_not_started_says_so(tmp_path):
    """A driver stopped between a stage's study and its first record (its STAGE attribute, its
    budget): status said '0/0 evals, ..., ETA -' for it."""
    import optuna

    from longrope.runs.status import render_status

    run, _ = run_small(tmp_path, iterations=0)
    optuna.create_study(study_name="short-32", storage=run.storage())
    lines = render_status(run, False).splitlines()
    assert "long-256: 12/12 evals" in lines[2], lines
    assert lines[3].strip() == "short-32: not started yet (no evaluation), starts once resumed", lines


def test_status_lists_the_stages_the_config_plans_but_no_driver_started(tmp_path, monkeypatch):
    """A run cut off in its first stage: status showed that stage alone, as if it were the run."""
    from longrope.runs.status import render_status

    ctrl_c_after(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        run_small(tmp_path, short="[32]", iterations=0)
    run = Run.open(tmp_path / "run")
    lines = render_status(run, False).splitlines()
    assert "long-256: 5/12 evals" in lines[2] and lines[3].strip() == "short-32: not started yet (starts once " \
        "resumed)", lines
    shown = json.loads(render_status(run, True))
    assert [s["name"] for s in shown["stages"]] == ["long-256"] and shown["not_started"] == ["short-32"]
    monkeypatch.undo()  # the same run uninterrupted: every planned stage has its line, none "not started"
    assert "not started" not in render_status(run_small(tmp_path, "whole", short="[32]", iterations=0)[0], False)
