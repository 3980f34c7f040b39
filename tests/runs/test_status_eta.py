"""status's ETA comes from the measured pace, so it scales with the workers actually running."""

import datetime

import optuna
import pytest

from longrope.runs.status import eta_seconds, pace
from longrope.runs.vocab import SECONDS


def _trials(gaps: list[float], seconds: float = 2.0) -> list:
    """Completed trials, each evaluation taking `seconds`, completing `gaps` apart."""
    t0 = datetime.datetime(2026, 1, 1)
    out, at = [], 0.0
    for i, gap in enumerate([0.0, *gaps]):
        at += gap
        t = optuna.trial.create_trial(value=1.0, user_attrs={SECONDS: seconds})
        t.number = i
        t.datetime_start = t0 + datetime.timedelta(seconds=at - seconds)
        t.datetime_complete = t0 + datetime.timedelta(seconds=at)
        out.append(t)
    return out


def test_eta_halves_with_two_workers():
    one = _trials([2.0] * 30)  # one worker: a 2 s evaluation completes every 2 s
    two = _trials([1.0] * 30)  # two workers: every second
    assert pace(one) == pytest.approx(0.5) and pace(two) == pytest.approx(1.0)
    assert eta_seconds(one, 100) == pytest.approx(200) and eta_seconds(two, 100) == pytest.approx(100)


def test_pace_reads_the_recent_window_only():
    resumed = _trials([3600.0] + [1.0] * 25)  # an hour's pause between two drivers, then 1/s
    assert pace(resumed) == pytest.approx(1.0)


def test_without_a_pace_one_workers_seconds_per_evaluation():
    assert pace(_trials([1.0])) is None
    assert eta_seconds(_trials([1.0], seconds=3.0), 10) == pytest.approx(30)
    assert eta_seconds([], 10) is None


def test_a_pause_inside_the_window_counts_as_one_evaluation():
    """Killed, resumed 40 s later: the gap was in the window for the next 20 evaluations, and the
    ETA read 0.25 evaluations a second where the run did 3.7."""
    paused = _trials([1.0] * 10 + [3600.0] + [1.0] * 5)
    assert pace(paused) == pytest.approx(1.0)
    assert pace(_trials([1.0, 2.0] * 8)) == pytest.approx(16 / 24)  # an uneven pace is no pause


def test_a_stopped_finetune_eta_counts_from_its_checkpoint(tmp_path):
    """A resume restarts a fine-tune at its last checkpoint, not at the step it reached."""
    import json

    from search_helpers import small_cfg

    from longrope.runs import Run
    from longrope.runs.status import render_status
    from longrope.search.cli import main

    (tmp_path / "c.toml").write_text(small_cfg(iterations=1)[1])
    assert main(["search", str(tmp_path / "c.toml"), "--run-dir", str(tmp_path / "r"), "--quiet",
                 "--max-evals", "4"]) == 0
    ft = tmp_path / "r" / "finetune" / "ft-256"
    ft.mkdir(parents=True)
    (ft / "progress.json").write_text(json.dumps({"length": 256, "step": 40, "steps": 100, "loss": 2.0,
                                                  "checkpoint_step": 25, "eta_seconds": 60.0}))
    line = next(ln for ln in render_status(Run.open(tmp_path / "r"), False).splitlines() if "finetune-256" in ln)
    assert "step 40/100 (checkpoint at step 25)" in line and "ETA 1.2 min once resumed" in line, line
