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
