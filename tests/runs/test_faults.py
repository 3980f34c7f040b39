"""Faults that must lose nothing: a failed write of best/, NaN candidates, an RDB storage."""

import dataclasses
import errno
import json
import os

import pytest
from search_helpers import run_small, small_cfg, trajectory

from longrope.objectives.perplexity import FAILED, Evaluation
from longrope.objectives.specs import ObjectiveSpec
from longrope.runs import Run, rundir
from longrope.search import config
from longrope.search.backends import InProcessBackend
from longrope.search.driver import Driver, run_search
from longrope.spaces import UserError


def test_disk_full_while_writing_best_keeps_previous(tmp_path, monkeypatch):
    run, _ = run_small(tmp_path)
    path = run.best_path("long", 256)
    before = path.read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "replace", full)
    with pytest.raises(UserError, match="cannot write .*long-256.json: No space left on device; the previous"):
        run.write_best(dataclasses.replace(run.best("long", 256), lambdas=(9.0,)))
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("code, says", [
    (errno.ENOSPC, r"cannot write .*: No space left on device; every result told before is kept; .*"),
    (errno.EIO, r"the run's storage failed at .*: Input/output error; every result told before is kept; .*"),
    (errno.ESTALE, r"the run's storage failed at .*: Stale file handle; every result told before is kept; .*")])
def test_disk_full_mid_search_is_one_line_and_resume_equals_uninterrupted(tmp_path, monkeypatch, code, says):
    """The journal's 60th append tears (half a line, then ENOSPC, as a full disk does; EIO or
    ESTALE, as an NFS soft mount's timeout or a lost server does) and the storage is back at once:
    the driver stops in one line and writes nothing more, since a re-queue appended after the torn
    half would damage a line inside the journal; the resume drops the torn last line and ends
    where an uninterrupted run does. (Until session 41 only a full or read-only disk was worded:
    EIO left a traceback and a journal damaged inside.)"""
    from optuna.storages.journal import JournalFileBackend

    ref, _ = run_small(tmp_path, name="ref")
    cfg, _ = small_cfg()
    real, calls = JournalFileBackend.append_logs, []

    def tears_once(self, logs):
        calls.append(len(logs))
        if len(calls) != 60:
            return real(self, logs)
        with open(self._file_path, "ab") as f:
            f.write((json.dumps(logs[0]) + "\n")[:40].encode())
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(JournalFileBackend, "append_logs", tears_once)
    with pytest.raises(UserError, match=says + " longrope resume "):
        run_search(cfg, str(tmp_path / "r"), progress=False)
    run = Run.open(tmp_path / "r")
    assert len(calls) == 60 and not run.journal.read_bytes().endswith(b"\n")  # nothing after the tear
    assert not (run.path / "run.lock").exists()
    run_search(cfg, str(tmp_path / "r"), resume=True, progress=False)
    assert trajectory(run) == trajectory(ref)


class NaNBackend(InProcessBackend):
    """Every third candidate's loss comes back NaN."""

    def submit(self, job):
        if job.key % 3 == 2:
            self._done.append((job.key, Evaluation(job.factors, job.length, FAILED, float("inf"),
                                                   reason="NLL is nan on document 0")))
        else:
            super().submit(job)


def test_nan_candidates_are_failed_trials_and_the_run_continues(tmp_path):
    cfg, _ = small_cfg()
    run = Run.create(tmp_path / "r", config.dumps(cfg))
    Driver(cfg, run, progress=False, backend=NaNBackend(ObjectiveSpec.of("synthetic"))).run_all()
    rows = trajectory(run)["long-256"]
    failed = [r for r in rows if r[2] == "FAIL"]
    assert len(rows) == 36 and len(failed) == 12  # trials 2, 5, ..., 35
    assert "NLL is nan" in (run.path / "events.log").read_text()
    assert json.loads(run.best_path("long", 256).read_text())["search_ppl"] > 0


def test_rdb_storage_gives_the_same_trajectory(tmp_path):
    ref, _ = run_small(tmp_path, name="journal")
    cfg, _ = small_cfg()
    cfg.search.storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    run = Run.create(tmp_path / "rdb", config.dumps(cfg))
    Driver(cfg, run, progress=False).run_all()
    assert os.path.getsize(tmp_path / "optuna.db") > 0
    import optuna

    study = optuna.load_study(study_name="long-256", storage=cfg.search.storage)
    ref_study = optuna.load_study(study_name="long-256", storage=ref.storage())
    assert sorted(t.value for t in study.trials if t.value) == sorted(t.value for t in ref_study.trials if t.value)
    # its studies are named by stage alone: a second run on that database would continue this one's
    from longrope.search.driver import run_search

    with pytest.raises(UserError, match=r"search.storage already holds studies \(long-256\), another run's"):
        run_search(cfg, str(tmp_path / "second"), progress=False)
    assert not (tmp_path / "second").exists()
    run_search(cfg, str(tmp_path / "rdb"), progress=False)  # its own run resumes on it


class AllFailBackend(InProcessBackend):
    """Every candidate's loss comes back NaN."""

    def submit(self, job):
        self._done.append((job.key, Evaluation(job.factors, job.length, FAILED, float("inf"),
                                               reason="NLL is nan on document 0")))


def test_a_generation_where_everything_failed_is_one_line(tmp_path):
    cfg, _ = small_cfg()
    run = Run.create(tmp_path / "r", config.dumps(cfg))
    with pytest.raises(UserError, match=r"generation 1 has no parents: none of the 12 candidates before it "
                                        r"scored completely \(12x NLL is nan on document 0\)"):
        Driver(cfg, run, progress=False, backend=AllFailBackend(ObjectiveSpec.of("synthetic"))).run_all()


def _strike_after(monkeypatch, owner, name, when=lambda *a: True, sig=None):
    """The driver's handler for `sig` (SIGTERM by default) called as `owner.name` returns (the
    first time `when` holds for its arguments), as Python would call it there between two
    bytecodes."""
    import signal

    sig = signal.SIGTERM if sig is None else sig
    real, struck = getattr(owner, name), []

    def wrapped(*a, **kw):
        out = real(*a, **kw)
        if not struck and when(*a):
            struck.append(1)
            signal.getsignal(sig)(sig, None)
        return out

    monkeypatch.setattr(owner, name, wrapped)
    return struck


def _signal_once_the_lock_is_taken(monkeypatch, sig, when=1):
    """Optuna's journal lock with the signal landing just after its lock file is created (on the
    `when`-th append): the driver's handler called there, as Python would call it between two
    bytecodes. Before runs/journal.py held it, its KeyboardInterrupt came out of acquire() ahead of
    get_lock_file's `try`, and the lock file stayed. Returns Optuna's acquire and the list of the
    appends that found a lock file (and waited for it)."""
    from optuna.storages.journal import JournalFileOpenLock

    real, calls, waited = JournalFileOpenLock.acquire, [], []

    def acquire(self):
        if os.path.exists(self._lock_file):  # the driver is the only writer: a lock file is a leak
            waited.append(len(calls))
        calls.append(1)
        return real(self)

    monkeypatch.setattr(JournalFileOpenLock, "acquire", acquire)
    _strike_after(monkeypatch, JournalFileOpenLock, "acquire", lambda *a: len(calls) == when, sig)
    return real, waited


@pytest.fixture
def own_handlers():
    """The driver leaves SIGINT and SIGTERM ignored on its way out, as a process that exits."""
    import signal

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in handlers.items():
        signal.signal(s, h)


def test_a_signal_during_a_journal_append_is_raised_once_the_lock_file_is_gone(tmp_path, monkeypatch,
                                                                               own_handlers):
    import signal

    import optuna

    from longrope.search.stopping import signals_as_interrupt

    _, waited = _signal_once_the_lock_is_taken(monkeypatch, signal.SIGINT)
    run = Run.create(tmp_path / "r", config.dumps(small_cfg()[0]))
    with signals_as_interrupt() as seen, pytest.raises(KeyboardInterrupt):
        optuna.create_study(study_name="s", storage=run.storage())
    assert seen == [signal.SIGINT]
    assert not run.journal.with_name("journal.log.lock").exists()  # the next write does not wait 30 s
    assert [s.study_name for s in optuna.get_all_study_summaries(run.storage())] == ["s"]  # written whole
    assert waited == []


def test_a_sigterm_inside_optunas_journal_lock_is_the_interruption_without_a_stall(tmp_path, monkeypatch,
                                                                                  capsys, own_handlers):
    """SIGTERM landing while the driver holds Optuna's journal lock: the interruption's line and
    code, the running trials re-queued at once (not after Optuna's 30-second grace period for a
    lock file left behind, with its warnings and a "did not possess lock" traceback: CI's failure
    of 031a354), and the resume ends where an uninterrupted run does."""
    import signal

    from optuna.storages.journal import JournalFileOpenLock

    ref, _ = run_small(tmp_path, name="ref")
    cfg, _ = small_cfg()
    real, waited = _signal_once_the_lock_is_taken(monkeypatch, signal.SIGTERM, when=60)
    with pytest.raises(SystemExit) as stopped:
        run_search(cfg, str(tmp_path / "r"), progress=False)
    err = capsys.readouterr().err
    assert stopped.value.code == 143 and "interrupted (SIGTERM); running trials were re-queued" in err, err
    assert waited == [] and "Traceback" not in err, (waited, err)  # re-queued without a wait
    monkeypatch.setattr(JournalFileOpenLock, "acquire", real)
    run_search(cfg, str(tmp_path / "r"), resume=True, progress=False)
    assert trajectory(Run.open(tmp_path / "r")) == trajectory(ref)




@pytest.mark.parametrize("where, said", [
    ("create", " while taking the run's lock; nothing was searched"),  # Run.create, half way
    ("guard", " while taking the run's lock; nothing was searched"),  # run.lock.guard made, no try yet
    ("lease", " while taking the run's lock; nothing was searched"),  # run.lock written, guard held
    ("start", "; running trials were re-queued. Resume with: longrope resume"),  # the start's lines
    ("end", " after the search ended"),  # the workers stopping once the search is done
])
def test_a_sigterm_outside_the_search_loop_leaves_a_run_that_resumes(tmp_path, monkeypatch, capsys,
                                                                    own_handlers, where, said):
    """A signal at start-up or on the way out: found by calling the handler at each line of a
    run (session 32). Inside Run.create it left a folder neither `search` nor `resume` took (no
    journal); inside run.lock's acquisition, the guard (resume refused for --lock-timeout) or
    the lease itself; after the start's writes or the end, a bare KeyboardInterrupt (exit 130
    for a SIGTERM, no line). Now each is the interruption's line and code, nothing is left
    behind, and a resume ends where an uninterrupted run does."""
    from longrope.runs import lease, rundir
    from longrope.search.plan import Plan

    class LeasesOs:  # lease.py's view of `os`, to strike as its guard's os.fstat returns
        fstat = os.fstat

        def __getattr__(self, name):
            return getattr(os, name)

    monkeypatch.setattr(lease, "os", LeasesOs())
    ref, _ = run_small(tmp_path, name="ref")
    cfg, _ = small_cfg()
    owner, name, when = {"create": (rundir, "_claim", lambda *a: True),
                         "guard": (lease.os, "fstat", lambda *a: True),
                         "lease": (lease.Lease, "_write", lambda *a: True),
                         "start": (Run, "event", lambda run, msg: msg.startswith("driver start")),
                         "end": (Plan, "close", lambda *a: True)}[where]
    struck = _strike_after(monkeypatch, owner, name, when)
    d = tmp_path / "r"
    with pytest.raises(SystemExit) as stopped:
        run_search(cfg, str(d), progress=False)
    err = capsys.readouterr().err
    assert struck and stopped.value.code == 143, err
    assert f"interrupted (SIGTERM){said}" in err and "Traceback" not in err, err
    assert sorted(p.name for p in d.iterdir()) == ["best", "config.toml", "events.log", "export", "journal.log"]
    assert not [p for p in d.rglob(".*")], "a temp file, guard or lock left behind"
    monkeypatch.undo()
    run_search(cfg, str(d), resume=True, progress=False)
    assert "taking over" not in capsys.readouterr().err  # run.lock was released, not left to take over
    assert trajectory(Run.open(d)) == trajectory(ref)


def test_a_signal_no_driver_section_words_is_still_the_interruptions_line_and_code(capsys, own_handlers):
    """Between the driver's sections (its handler just installed, or run_search's last cleanup)
    a SIGTERM's KeyboardInterrupt came out of run_search bare: the CLI said "interrupted" and
    exited 130, where a scheduler that sent SIGTERM reads 143."""
    import signal

    from longrope.search.stopping import signals_as_interrupt

    with pytest.raises(SystemExit) as stopped, signals_as_interrupt():
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert stopped.value.code == 143 and capsys.readouterr().err == "interrupted (SIGTERM)\n"
    with pytest.raises(KeyboardInterrupt), signals_as_interrupt():  # not a signal's: left as it is
        raise KeyboardInterrupt


def test_a_second_signal_while_the_first_is_held_is_answered_with_a_line(capsys, own_handlers):
    """README: a second press while the driver stops is answered with a line, not obeyed; the
    exit code is the first signal's."""
    import signal

    from longrope.search.stopping import signals_as_interrupt
    from longrope.spaces.files import uninterrupted

    with pytest.raises(SystemExit) as stopped, signals_as_interrupt():
        with uninterrupted():  # a journal append, say: the first signal is held until it ends
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
    err = capsys.readouterr().err
    assert stopped.value.code == 143, err
    assert err.startswith(f"already stopping (re-queueing, stopping the workers); kill -9 {os.getpid()} stops "
                          "at once") and err.endswith("interrupted (SIGTERM)\n"), err
