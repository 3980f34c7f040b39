"""status's counts: the pace over its last window, failed and re-queued trials, the stages' order."""

import datetime
from types import SimpleNamespace

import optuna
import pytest


def _trial(state, end, **system_attrs):
    t0 = datetime.datetime(2026, 1, 1)
    t = optuna.trial.create_trial(
        state=state, value=1.0 if state == optuna.trial.TrialState.COMPLETE else None,
        params={}, distributions={}, system_attrs=system_attrs)
    t.datetime_start = t0 + datetime.timedelta(seconds=end - 1)
    t.datetime_complete = t0 + datetime.timedelta(seconds=end)
    return t


def test_pace_is_measured_over_the_last_window():
    from longrope.runs.status import PACE_WINDOW, pace

    C = optuna.trial.TrialState.COMPLETE
    ends = [i * 1.0 for i in range(PACE_WINDOW)]  # early: one per second
    ends += [ends[-1] + 5.0 * (i + 1) for i in range(PACE_WINDOW)]  # now: one per 5 s
    trials = [_trial(C, e) for e in ends]
    assert pace(trials) == pytest.approx(0.2)


def _run_of(*studies):
    """A run of these studies, whose best files are all there."""
    return SimpleNamespace(studies=lambda: list(studies),
                           best_path=lambda kind, length: SimpleNamespace(exists=lambda: True))


def _study(name, kind, length, budget, trials):
    from longrope.runs.vocab import STAGE

    s = optuna.create_study(study_name=name)
    s.set_user_attr(STAGE, {"kind": kind, "length": length, "budget": budget})
    for t in trials:
        s.add_trial(t)
    return s


def test_failed_evaluations_count_towards_the_budget():
    from longrope.runs.status import stage_summaries

    C, F = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    study = _study("long-1024", "long", 1024, 3, [_trial(C, 1), _trial(C, 2), _trial(F, 3)])
    (s,) = stage_summaries(_run_of(study))
    assert s["evals"] == 3 and s["failed"] == 1 and s["done"]


def test_requeued_trials_are_not_counted():
    from longrope.runs.status import stage_summaries
    from longrope.runs.vocab import REQUEUED

    C, F = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    study = _study("long-1024", "long", 1024, 4, [_trial(C, 1), _trial(F, 2, **{REQUEUED: True}), _trial(C, 3)])
    (s,) = stage_summaries(_run_of(study))
    assert s["evals"] == 2 and s["failed"] == 0 and not s["done"]


def test_stages_are_listed_long_first_then_by_length():
    from longrope.runs.status import stage_summaries

    C = optuna.trial.TrialState.COMPLETE
    studies = [_study("short-512", "short", 512, 1, [_trial(C, 1)]),
               _study("long-4096", "long", 4096, 1, [_trial(C, 1)]),
               _study("long-2048", "long", 2048, 1, [_trial(C, 1)])]
    assert [s["name"] for s in stage_summaries(_run_of(*studies))] == ["long-2048", "long-4096", "short-512"]


def test_a_run_whose_finetune_is_still_to_merge_is_not_finished():
    """Every stage done but the fine-tune after long-64 not merged yet: status said "none running
    (the run is finished)" instead of naming the resume that trains it."""
    from longrope.runs.status import finished

    cfg = {"space": {"targets": [64, 128]}, "finetune": {"after": [64]}}
    stages = [{"name": "long-64", "done": True}, {"name": "long-128", "done": True}]
    assert not finished(cfg, stages, [])
    assert not finished(cfg, stages, [{"target": 64, "done": False}])
    assert finished(cfg, stages, [{"target": 64, "done": True}])
    assert not finished(cfg, stages[:1], [{"target": 64, "done": True}])  # long-128 not done
