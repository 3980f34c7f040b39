"""Stopping a driver: Ctrl-C and SIGTERM (what preemption and `scancel` send) both unwind it
as a KeyboardInterrupt, so that the running trials are re-queued and the lease released, and it
exits with the code a scheduler reads: 130 after Ctrl-C, 143 after SIGTERM (preempted). And
what the next driver does with the trials a killed one left running (requeue_running)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from longrope.runs import journal, vocab
from longrope.runs.optuna_io import fail_trial, set_trial_system_attr

from .sampler import slot_of

if TYPE_CHECKING:
    from .proposers import Proposer


def how_stopped(seen: list[int]) -> tuple[str, int]:
    """The signal's name and exit code as a scheduler reads them: 143 after SIGTERM (preempted),
    130 after Ctrl-C."""
    return ("SIGTERM", 143) if signal.SIGTERM in seen else ("Ctrl-C", 130)


def interrupted(seen: list[int], what: str) -> SystemExit:
    """Say so, and exit with the signal's code."""
    name, code = how_stopped(seen)
    print(f"interrupted ({name}){what}", file=sys.stderr)
    return SystemExit(code)


@contextmanager
def signals_as_interrupt():
    """While a driver runs, SIGTERM re-queues and releases like Ctrl-C (main thread only), and
    only the first of either counts: a second Ctrl-C (or SIGTERM) would break into the re-queueing
    or into Ray's shutdown (a traceback, or a death by SIGINT). Yields the list of the signal
    that came: inside ray.get, Ray turns the handler's exception into a plain KeyboardInterrupt of
    its own, and the exit code must still say SIGTERM."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def handler(signum, frame):
        if seen:
            print(f"already stopping (re-queueing, stopping the workers); kill -9 {os.getpid()} stops at "
                  "once, and a resume re-queues what was running", file=sys.stderr)
            return
        seen.append(signum)
        if journal.hold(stop):  # inside a journal append: raised once its lock file is removed
            return
        stop()

    def stop():
        raise KeyboardInterrupt()  # SIGTERM unwinds exactly as Ctrl-C; `seen` tells them apart

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield seen
    finally:
        # On the way out after a signal, the rest (Ray's shutdown at exit) is not broken into either
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_IGN if seen else old)


def requeue_running(study: optuna.Study, proposer: Proposer) -> int:
    """Fail the RUNNING trials of a dead driver and re-queue their exact parameters.
    Idempotent: a slot still waiting in the queue is not queued twice. Only a WAITING copy
    counts: a re-queued copy that was running when the driver died again is re-queued again.
    A copy popped off the queue is RUNNING one journal write before the sampler copies its slot
    into the system attrs (before_trial): a driver killed in between left it only in the user
    attrs, and without it the copy took the next fresh slot (the lost one never scored)."""
    trials = study.get_trials(deepcopy=False)
    queued = {tuple(t.user_attrs[vocab.SLOT]) for t in trials
              if t.state == TrialState.WAITING and vocab.SLOT in t.user_attrs}
    n = 0
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        slot = slot_of(t)
        params = proposer.requeue_params(t)
        if params is not None and (slot is None or slot not in queued):
            attrs = {vocab.SLOT: list(slot)} if slot is not None else {}
            study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
            if slot is not None:
                queued.add(slot)
        set_trial_system_attr(study, t, vocab.REQUEUED, True)
        fail_trial(study, t)
        n += 1
    return n


def requeue_strays(study: optuna.Study, proposer: Proposer, check: Callable[[], None]) -> int:
    """Re-queue trials RUNNING while the driver has none in flight: written by a driver that
    stalled inside study.ask, past its lease check, and woke after this one took the run over.
    The search would otherwise wait on them, or count them as done. `check`: the lease's, first."""
    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return 0
    check()
    return requeue_running(study, proposer)
