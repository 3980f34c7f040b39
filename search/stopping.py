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
from shlex import quote
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from longrope.runs import Run, vocab
from longrope.runs.lease import Lease, LeaseLost
from longrope.runs.optuna_io import fail_trial, set_trial_system_attr
from longrope.runs.rundir import STORAGE_ERRORS
from longrope.spaces.files import hold_signal

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


def interruption(e: BaseException, seen: list[int], lease: Lease, run: Run,
                 run_dir: str) -> BaseException | None:
    """What a driver raises when its search stops on `e` (a signal's KeyboardInterrupt, or an
    error); None: `e` itself (a bug's traceback, or a full disk, which run_search words)."""
    if lease.lost and lease.mine() is False and not isinstance(e, (KeyboardInterrupt, LeaseLost)):
        # taken over while it hung: what failed on waking (Optuna's journal lock, which the
        # new holder cleared) is that, not a bug to show as a traceback
        return LeaseLost(lease.why_lost())
    # A signal's KeyboardInterrupt can strike inside a library's cleanup and come out as
    # another error (a journal append is shielded: runs/journal.py): after a signal that is
    # the interruption too, unless the disk is full
    if not isinstance(e, KeyboardInterrupt) and (
            not seen or isinstance(e, OSError) and e.errno in STORAGE_ERRORS):
        return None
    resume = f"longrope resume {quote(str(run_dir))}"
    if lease.lost and lease.mine():  # stalled past its timeout, and nobody took over
        return interrupted(seen, "; this driver was unresponsive for longer than --lock-timeout and "
                           "stopped writing to the run, so nothing was re-queued here; resume with: "
                           f"{resume}")
    if lease.lost:  # abandon_inflight wrote nothing: the run is another driver's now
        return interrupted(seen, "; another driver holds the run now (it was taken over while this one "
                           "hung), so nothing was re-queued here; it continues the search")
    run.event(f"interrupted ({how_stopped(seen)[0]}); running trials re-queued")
    return interrupted(seen, f"; running trials were re-queued. Resume with: {resume}")


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
        if hold_signal(stop):  # in an uninterrupted section (a journal append, run.lock): once it ends
            return
        stop()

    def stop():
        raise KeyboardInterrupt()  # SIGTERM unwinds exactly as Ctrl-C; `seen` tells them apart

    previous = {}
    try:  # installed inside: one signal between the two left neither restored
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        yield seen
    except KeyboardInterrupt:  # where the driver does not word it (a gap between its sections):
        if not seen:  # the interruption's line and code all the same
            raise
        raise interrupted(seen, "") from None
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
    attrs, and without it the copy took the next fresh slot (the lost one never scored). A driver
    killed between queueing a copy and failing its trial left the trial RUNNING beside its copy:
    the copy names it (COPY_OF), so the next resume queues no second one (cmaes/tpe/random, whose
    trials have no slot, scored that candidate twice and never drew their last fresh one)."""
    trials = study.get_trials(deepcopy=False)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    queued = {tuple(t.user_attrs[vocab.SLOT]) for t in waiting if vocab.SLOT in t.user_attrs}
    copied = {t.user_attrs[vocab.COPY_OF] for t in waiting if vocab.COPY_OF in t.user_attrs}
    n = 0
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        slot = slot_of(t)
        params = proposer.requeue_params(t)
        if params is not None and t.number not in copied and (slot is None or slot not in queued):
            attrs: dict = {vocab.COPY_OF: t.number}
            if slot is not None:
                attrs[vocab.SLOT] = list(slot)
            if vocab.DRAW in t.system_attrs:  # cmaes/tpe/random: asked as its draw was (DrawSeeded)
                attrs[vocab.DRAW] = t.system_attrs[vocab.DRAW]
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
