"""Re-queueing and the interruption's words: a slot queued once, the lease checked before a write,
a full disk after a signal, a stalled driver, a second signal ignored."""

import os
import time
from types import SimpleNamespace

import optuna
import pytest


def _proposer():
    return SimpleNamespace(requeue_params=lambda t: {"x": 1.0})


def _waiting(study):
    return [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]


def test_a_slot_already_waiting_is_not_queued_again():
    from longrope.runs.vocab import SLOT
    from longrope.search.stopping import requeue_running

    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0}, user_attrs={SLOT: [0, 3]})
    study.ask()  # RUNNING, holding slot (0, 3) (a dead driver's)
    study.enqueue_trial({"x": 1.0}, user_attrs={SLOT: [0, 3]})  # its copy, queued already
    assert requeue_running(study, _proposer()) == 1
    assert len(_waiting(study)) == 1


def test_two_running_trials_of_one_slot_queue_one_copy():
    from longrope.runs.vocab import SLOT
    from longrope.search.stopping import requeue_running

    study = optuna.create_study()
    for _ in range(2):  # the original and a re-queued copy, both left RUNNING by dead drivers
        study.enqueue_trial({"x": 1.0}, user_attrs={SLOT: [1, 0]})
        study.ask()
    assert requeue_running(study, _proposer()) == 2
    assert len(_waiting(study)) == 1


def test_a_resume_killed_between_queueing_a_copy_and_failing_its_trial_queues_no_second(monkeypatch):
    """cmaes/tpe/random trials have no slot: a resume killed after it queued a trial's copy and
    before it failed the trial left both; the next resume queued another copy, the candidate was
    scored twice and the last fresh one never drawn (a search unlike the uninterrupted one)."""
    from longrope.search import stopping

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    running = [study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}) for _ in range(2)]
    proposer = SimpleNamespace(requeue_params=lambda t: t.params)
    fail = stopping.fail_trial

    def killed(*a):
        raise KeyboardInterrupt  # kill -9, as far as the journal can tell: nothing after the enqueue

    monkeypatch.setattr(stopping, "fail_trial", killed)
    with pytest.raises(KeyboardInterrupt):
        stopping.requeue_running(study, proposer)
    assert len(_waiting(study)) == 1
    monkeypatch.setattr(stopping, "fail_trial", fail)
    assert stopping.requeue_running(study, proposer) == 2
    queued = sorted(t.system_attrs["fixed_params"]["x"] for t in _waiting(study))
    assert queued == sorted(t.params["x"] for t in running)


def test_requeue_strays_checks_the_lease_before_it_writes():
    from longrope.runs.lease import LeaseLost
    from longrope.search.stopping import requeue_strays

    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0})
    study.ask()

    def lost():
        raise LeaseLost("taken over")

    with pytest.raises(LeaseLost):
        requeue_strays(study, _proposer(), lost)
    assert not _waiting(study)


def test_a_full_disk_after_a_signal_is_left_to_run_search(tmp_path):
    import errno
    import signal

    from longrope.search.stopping import interruption

    lease = SimpleNamespace(lost=False, mine=lambda: True)
    e = OSError(errno.ENOSPC, "No space left on device")
    assert interruption(e, [signal.SIGTERM], lease, SimpleNamespace(event=lambda m: None), str(tmp_path)) is None


def test_a_stalled_driver_nobody_took_over_says_resume(tmp_path, capsys):
    import signal

    from longrope.search.stopping import interruption

    lease = SimpleNamespace(lost=True, mine=lambda: True)
    out = interruption(KeyboardInterrupt(), [signal.SIGINT], lease, SimpleNamespace(event=lambda m: None),
                       str(tmp_path))
    assert isinstance(out, SystemExit) and out.code == 130
    assert "unresponsive for longer than --lock-timeout" in capsys.readouterr().err


def test_after_a_signal_the_handlers_ignore_a_second_one():
    import signal

    from longrope.search.stopping import signals_as_interrupt

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as e, signals_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert e.value.code == 143
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
