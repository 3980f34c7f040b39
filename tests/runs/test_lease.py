"""run.lock as a lease (issue 18): a driver preempted on another host is taken over once its
heartbeat is older than --lock-timeout, a live one is refused by name, the heartbeat moves,
and of concurrent resumers exactly one wins."""

import errno
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from search_helpers import small_cfg, trajectory

from longrope.runs import Run
from longrope.runs.lease import Lease, LeaseLost
from longrope.search.cli import main
from longrope.search.driver import Driver
from longrope.spaces import UserError


def forge(path, host="node-b", pid=4242, age=0.0, **extra):
    """The lock a driver on another host would have written `age` seconds after its last beat."""
    path.write_text(json.dumps({"host": host, "pid": pid, "heartbeat": time.time() - age,
                                "started": time.time() - 3600, "token": "theirs", **extra}))


def test_fresh_foreign_lock_is_refused_naming_host_and_pid(tmp_path):
    lock = tmp_path / "run.lock"
    forge(lock, age=5)
    before = lock.read_bytes()
    with pytest.raises(UserError, match=r"in use by pid 4242 on node-b \(heartbeat 5 s ago") as e:
        Lease(lock, timeout=60).acquire()
    assert "\n" not in str(e.value) and lock.read_bytes() == before


def test_a_live_holder_in_another_pid_namespace_under_this_hostname_is_not_dead(tmp_path, capsys):
    """Two containers on one host share its hostname, not their pids: the holder's pid missing here
    says nothing of it there. Only a holder in this pid namespace and boot is known dead at once."""
    from longrope.runs.lease import pid_space

    lock = tmp_path / "run.lock"
    mine = {"host": socket.gethostname(), "pid": 2**22 + 17, "heartbeat": time.time(), "token": "theirs"}
    lock.write_text(json.dumps({**mine, "pid_space": "another-boot:pid:[1]"}))
    with pytest.raises(UserError, match="is in use by pid"):
        Lease(lock, timeout=60).acquire()
    lock.write_text(json.dumps({**mine, "pid_space": pid_space()}))
    lease = Lease(lock, timeout=60)
    lease.acquire()  # dead here: taken at once
    lease.release()
    assert "taking over a stale lock of dead process" in capsys.readouterr().err


def test_stale_foreign_lock_is_taken_over_with_a_warning(tmp_path, capsys):
    lock = tmp_path / "run.lock"
    forge(lock, age=61)
    with Lease(lock, timeout=60, interval=0.05) as lease:
        held = json.loads(lock.read_text())
        assert held["token"] == lease.me["token"] and held["pid"] == os.getpid()
    assert "taking over the lock of pid 4242 on node-b: no heartbeat for 61 s" in capsys.readouterr().err
    assert not lock.exists()


def test_a_live_holder_on_a_skewed_clock_is_not_taken_over(tmp_path):
    """node-b's clock is 10 min behind: by this host's clock its lease looks 600 s old, but its
    heartbeat moves while watched, so it is refused, and the message says why."""
    lock = tmp_path / "run.lock"
    stop = threading.Event()

    def node_b_beats():  # every 20 ms, with its own (slow) clock, atomically as a holder writes
        tmp = tmp_path / "node-b.tmp"
        while not stop.is_set():
            forge(tmp, age=600)
            os.replace(tmp, lock)
            time.sleep(0.02)

    forge(lock, age=600)  # its lease is there before this driver looks
    beater = threading.Thread(target=node_b_beats)
    beater.start()
    try:
        with pytest.raises(UserError, match="in use by pid 4242 on node-b .*the two hosts' clocks differ"):
            Lease(lock, timeout=60, interval=0.1).acquire()
    finally:
        stop.set()
        beater.join()
    assert json.loads(lock.read_text())["token"] == "theirs"


def test_an_unreadable_lock_is_watched_before_it_is_taken(tmp_path, capsys):
    """Unreadable for a moment (a holder's lease is readable again within the watch): refused;
    unreadable throughout: taken over with a warning."""
    lock = tmp_path / "run.lock"
    lock.write_text("{torn")

    def readable_again():  # node-b's next heartbeat, written as a holder writes it
        time.sleep(0.05)
        forge(tmp_path / "next", age=0)
        os.replace(tmp_path / "next", lock)

    t = threading.Thread(target=readable_again)
    t.start()
    with pytest.raises(UserError, match=r"in use by pid 4242 on node-b \(heartbeat 0 s ago"):
        Lease(lock, timeout=60, interval=0.1).acquire()
    t.join()
    lock.write_text("{torn")
    with Lease(lock, timeout=60, interval=0.1) as lease:
        assert json.loads(lock.read_text())["token"] == lease.me["token"]
    assert "taking over an unreadable lock file" in capsys.readouterr().err
    # unreadable only at the second look (it was absent or fresh at the first): not taken
    lease = Lease(lock, timeout=60, interval=0.1)
    assert lease.stale({}, watched=None) is None and lease.stale({}, watched={})


def test_heartbeat_advances_while_held(tmp_path):
    lock = tmp_path / "run.lock"
    with Lease(lock, interval=0.05):
        first = json.loads(lock.read_text())["heartbeat"]
        time.sleep(0.4)
        assert json.loads(lock.read_text())["heartbeat"] > first


def test_concurrent_resumers_cannot_both_win(tmp_path):
    lock = tmp_path / "run.lock"
    forge(lock, age=600)
    start, results = threading.Barrier(8), []

    def resume():
        start.wait()
        lease = Lease(lock, timeout=60, interval=0.05)
        try:
            lease.acquire()
        except UserError as e:
            results.append(str(e))
            return
        results.append("won")
        time.sleep(0.5)  # hold it while the others look
        lease.release()

    threads = [threading.Thread(target=resume) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("won") == 1 and all("in use by pid" in r for r in results if r != "won")


def test_two_acquirers_that_find_one_stale_guard_are_not_both_inside(tmp_path, monkeypatch):
    """run.lock.guard left by an acquirer killed inside it: B finds it stale and stalls before
    removing it; A finds it stale too, removes it and makes its own. B's removal used to delete
    A's fresh guard, and both wrote run.lock (and cleared the journal's lock) at once."""
    guard = tmp_path / "run.lock.guard"
    guard.touch()
    os.utime(guard, (time.time() - 1000,) * 2)
    rename, unlink, stalled = os.rename, Path.unlink, []

    def stall():  # B decided the guard is stale, then lost the CPU before it removed it
        if threading.current_thread().name == "B" and not stalled:
            stalled.append(1)
            time.sleep(0.3)

    def slow_rename(src, dst):
        stall()
        return rename(src, dst)

    def slow_unlink(path, missing_ok=False):
        if path == guard:
            stall()
        return unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(os, "rename", slow_rename)
    monkeypatch.setattr(Path, "unlink", slow_unlink)
    monkeypatch.setattr("longrope.runs.lease.GUARD_WAIT", 3.0)
    inside, overlaps, mutex = [], [], threading.Lock()

    def acquire(delay):
        time.sleep(delay)
        with Lease(tmp_path / "run.lock", timeout=60)._guarded():
            with mutex:
                overlaps.extend(inside)
                inside.append(threading.current_thread().name)
            time.sleep(0.6)
            with mutex:
                inside.remove(threading.current_thread().name)

    threads = [threading.Thread(target=acquire, args=(d,), name=n) for n, d in (("B", 0), ("A", 0.1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stalled and overlaps == [] and not guard.exists()  # B went in after A left
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_lease_taken_over_is_lost_and_left_to_the_new_holder(tmp_path, capsys):
    lock = tmp_path / "run.lock"
    lease = Lease(lock, interval=0.05)
    lease.acquire()
    forge(lock, host="node-c", age=0)  # what a take-over by node-c writes while this one hung
    time.sleep(0.3)
    lease.release()
    assert lease.lost and json.loads(lock.read_text())["host"] == "node-c"
    assert "was taken over by another driver" in capsys.readouterr().err


def test_a_refresh_that_stalls_past_the_timeout_loses_the_lease(tmp_path, capsys, monkeypatch):
    """The heartbeat checks the lock is its own, then writes: a write stalled (a hung NFS mount)
    past the timeout may land after another driver took over, replacing its lease. The holder
    then counts itself lost, so at most the new holder goes on writing."""
    lock = tmp_path / "run.lock"
    lease = Lease(lock, timeout=1.0, interval=0.1)
    lease.acquire()
    real, writes = Lease._write, []

    def slow(self):
        writes.append(1)
        if len(writes) == 2:
            time.sleep(1.3)  # node-c took the run over meanwhile; this write then lands over it
        real(self)

    monkeypatch.setattr(Lease, "_write", slow)
    time.sleep(2.0)
    assert lease.lost and len(writes) == 2  # no refresh after the stalled one
    with pytest.raises(LeaseLost):
        lease.check()
    lease.release()
    assert "was not refreshed for" in capsys.readouterr().err


def test_a_driver_that_stalled_with_nobody_taking_over_says_so(tmp_path, capsys):
    """Silent past its own timeout (a SIGSTOP, a suspended VM), a driver stops writing in case it
    was taken over; when nobody did, it must not say another driver holds the run (naming its own
    pid) and continues the search: nobody does, and the user has to resume."""
    lock = tmp_path / "run.lock"
    with Lease(lock, timeout=1.0, interval=0.1) as lease:
        lease._beaten -= 10  # as after a 10 s stop: the next beat finds the stall
        time.sleep(0.4)
        assert lease.lost and lease.mine()
        with pytest.raises(LeaseLost, match=r"unresponsive for longer than --lock-timeout \(1 s\).*none did: "
                           r"`longrope resume .*` continues the search") as e:
            lease.check()
        assert "held by" not in str(e.value)
        forge(lock, host="node-c")  # taken over after all
        with pytest.raises(LeaseLost, match="now held by pid 4242 on node-c"):
            lease.check()


def test_a_holder_is_judged_by_its_own_longer_timeout(tmp_path, capsys):
    """A driver started with --lock-timeout 600 (a slow shared file system) keeps writing through
    600 s of silence; a resume with the default 60 s took it over after 61 s while `status` still
    called it live. The longer of the two timeouts decides."""
    from longrope.runs.status import holder

    lock = tmp_path / "run.lock"
    forge(lock, age=61, timeout=600.0)
    assert holder(lock)["state"] == "live"
    with pytest.raises(UserError, match=r"in use by pid 4242 on node-b .*--lock-timeout \(600 s, the longer"):
        Lease(lock, timeout=60, interval=0.05).acquire()
    forge(lock, age=601, timeout=600.0)
    with Lease(lock, timeout=60, interval=0.05):
        pass
    assert "no heartbeat for 601 s (> --lock-timeout 600 s)" in capsys.readouterr().err
    forge(lock, age=61, timeout=30.0)  # a shorter one of the holder's: this driver's own decides
    with pytest.raises(UserError, match="in use by pid 4242"):
        Lease(lock, timeout=120, interval=0.05).acquire()


def test_an_unreadable_lock_is_not_a_lost_lease(tmp_path):
    """A read that fails just now (a flaky shared file system) is looked at again, not taken
    for a take-over; a foreign lease is."""
    lock = tmp_path / "run.lock"
    with Lease(lock, interval=0.05) as lease:
        lock.write_text("{not json")
        time.sleep(0.3)
        lease.check()
        assert not lease.lost
        lease._stop.set()  # stalled, as a holder is before any take-over: a beat between its read
        lease._thread.join()  # and its write would put this lease back over node-c's
        forge(lock, host="node-c")
        with pytest.raises(UserError, match="now held by pid 4242 on node-c"):
            lease.check()
    assert lease.lost and json.loads(lock.read_text())["host"] == "node-c"


def test_a_ticket_checks_the_lease_where_the_lease_is_not(tmp_path):
    """The ticket travels (pickled) to work running elsewhere, a fine-tune on a Ray node: it
    passes while its lease holds the lock or the lock cannot be read just now, and stops the
    work once another driver took the run over or the lock is gone."""
    lock = tmp_path / "run.lock"
    with Lease(lock) as lease:  # no heartbeat within the test (5 s)
        ticket = pickle.loads(pickle.dumps(lease.ticket()))
        ticket()
        lock.write_text("{not json")
        ticket()
        forge(lock, host="node-c")
        with pytest.raises(UserError, match="now held by pid 4242 on node-c"):
            ticket()
        lock.unlink()
        with pytest.raises(UserError, match="run.lock was removed while it ran.*nobody holds it now"):
            ticket()  # was: "taken over ... the driver holding it continues the search" (none does)


def test_bad_timeout_is_one_line(tmp_path):
    for bad in (0, float("nan"), float("inf")):  # inf: a guard left by a killed acquirer, for ever
        with pytest.raises(UserError, match="--lock-timeout must be a positive, finite number"):
            Lease(tmp_path / "run.lock", timeout=bad)
    # a live driver beats every 5 s: a timeout of 10 s or less could take its lease over
    with pytest.raises(UserError, match="--lock-timeout must be more than 10 s"):
        Lease(tmp_path / "run.lock", timeout=10)
    assert not (tmp_path / "run.lock").exists()


@pytest.fixture
def quick_heartbeat(monkeypatch):
    """The drivers' heartbeat every 0.2 s, so a take-over's watch lasts 0.4 s, not 10."""
    monkeypatch.setattr("longrope.runs.lease.HEARTBEAT", 0.2)


def test_a_driver_taken_over_mid_run_stops_without_writing(tmp_path, monkeypatch, capsys, quick_heartbeat):
    """A driver that hung past --lock-timeout while node-c took the run over wakes up and stops
    at its next write: the journal stays as node-c found it, the lock stays node-c's, and a
    resume after node-c ends where an uninterrupted search ends."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(small_cfg()[1])
    ref, run_dir = tmp_path / "ref", tmp_path / "run"
    assert main(["search", str(cfg), "--run-dir", str(ref), "--quiet", "--max-evals", "24"]) == 0
    told, journal = [], {}
    real_tell = Driver.tell

    def tell(self, study, trial, ev):  # this driver hangs before its 5th result; node-c takes over
        told.append(trial.number)
        if len(told) == 5:
            forge(run_dir / "run.lock", host="node-c", age=0)
            journal["at take-over"] = (run_dir / "journal.log").read_bytes()
        return real_tell(self, study, trial, ev)

    monkeypatch.setattr(Driver, "tell", tell)
    capsys.readouterr()
    assert main(["search", str(cfg), "--run-dir", str(run_dir), "--quiet", "--max-evals", "24"]) == 2
    assert "now held by pid 4242 on node-c" in capsys.readouterr().err
    assert len(told) == 5 and (run_dir / "journal.log").read_bytes() == journal["at take-over"]
    assert json.loads((run_dir / "run.lock").read_text())["host"] == "node-c"
    monkeypatch.setattr(Driver, "tell", real_tell)
    forge(run_dir / "run.lock", host="node-c", age=600)  # node-c is preempted in its turn
    assert main(["resume", str(run_dir), "--quiet", "--max-evals", "24"]) == 0
    assert trajectory(Run.open(run_dir)) == trajectory(Run.open(ref))


def test_a_library_error_of_a_driver_taken_over_is_the_take_over(tmp_path, monkeypatch, capsys):
    """Woken after a take-over (SIGSTOP past --lock-timeout), the driver's Optuna call failed on the
    journal lock the new holder had cleared ("did not possess lock"): a traceback, exit 1."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(small_cfg()[1])
    run_dir = tmp_path / "run"
    told = []

    def tell(self, study, trial, ev):
        told.append(trial.number)
        if len(told) == 3:
            forge(run_dir / "run.lock", host="node-c", age=0)
            self.lease.lost = True  # what its heartbeat thread finds on waking
            raise RuntimeError("Error: did not possess lock")  # Optuna's JournalFileOpenLock.release
        return real_tell(self, study, trial, ev)

    real_tell = Driver.tell
    monkeypatch.setattr(Driver, "tell", tell)
    capsys.readouterr()
    assert main(["search", str(cfg), "--run-dir", str(run_dir), "--quiet", "--max-evals", "24"]) == 2
    err = capsys.readouterr().err
    assert "now held by pid 4242 on node-c" in err and "Traceback" not in err, err


def test_a_driver_taken_over_while_it_scores_held_out_text_writes_nothing_after(tmp_path, monkeypatch, capsys):
    """The held-out score of a stage's best takes minutes to hours at long lengths; a driver taken
    over meanwhile used to cache it in the journal and write the best file anyway."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(small_cfg()[1])
    run_dir, seen = tmp_path / "run", {}
    real = Driver.evaluate_heldout

    def evaluate_heldout(self, stage, factors):
        ppl = real(self, stage, factors)
        forge(run_dir / "run.lock", host="node-c", age=0)  # taken over while it scored
        seen["journal"] = (run_dir / "journal.log").read_bytes()
        seen["best"] = {p.name: p.read_bytes() for p in (run_dir / "best").glob("*.json")}
        return ppl

    monkeypatch.setattr(Driver, "evaluate_heldout", evaluate_heldout)
    capsys.readouterr()
    assert main(["search", str(cfg), "--run-dir", str(run_dir), "--quiet", "--max-evals", "12"]) == 2
    assert "now held by pid 4242 on node-c" in capsys.readouterr().err
    assert (run_dir / "journal.log").read_bytes() == seen["journal"]
    assert {p.name: p.read_bytes() for p in (run_dir / "best").glob("*.json")} == seen["best"]


def test_a_driver_taken_over_while_its_workers_start_writes_nothing_after(tmp_path, monkeypatch, capsys):
    """Each stage starts the workers (again, once a fine-tune switched the model: minutes to load
    a large one); a driver taken over meanwhile used to create the next stage's study anyway."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(small_cfg(short="[32]")[1])
    run_dir, seen = tmp_path / "run", {}
    real = Driver.start_backend

    def start_backend(self):
        real(self)
        if self.run.studies():  # the second stage's: taken over while the workers (re)started
            forge(run_dir / "run.lock", host="node-c", age=0)
            seen["journal"] = (run_dir / "journal.log").read_bytes()

    monkeypatch.setattr(Driver, "start_backend", start_backend)
    capsys.readouterr()
    assert main(["search", str(cfg), "--run-dir", str(run_dir), "--quiet", "--max-evals", "12"]) == 2
    assert "now held by pid 4242 on node-c" in capsys.readouterr().err
    assert (run_dir / "journal.log").read_bytes() == seen["journal"] and len(Run.open(run_dir).studies()) == 1


def test_a_driver_taken_over_then_interrupted_hands_nothing_back(tmp_path, monkeypatch, capsys, quick_heartbeat):
    """Taken over while it hung, then Ctrl-C before its next write: the trials in flight are the
    new holder's to re-queue, not this driver's (failing them would crash the new holder's tells)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(small_cfg()[1])
    run_dir, told, journal = tmp_path / "run", [], {}
    real_tell = Driver.tell

    def tell(self, study, trial, ev):
        told.append(trial.number)
        if len(told) == 5:
            forge(run_dir / "run.lock", host="node-c", age=0)
            journal["at take-over"] = (run_dir / "journal.log").read_bytes()
            raise KeyboardInterrupt
        return real_tell(self, study, trial, ev)

    monkeypatch.setattr(Driver, "tell", tell)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["search", str(cfg), "--run-dir", str(run_dir), "--quiet", "--max-evals", "24"])
    assert stop.value.code == 130
    assert "another driver holds the run now" in capsys.readouterr().err
    assert (run_dir / "journal.log").read_bytes() == journal["at take-over"]
    assert json.loads((run_dir / "run.lock").read_text())["host"] == "node-c"


def test_a_live_run_and_a_bad_timeout_are_refused_before_the_workers_load(tmp_path, monkeypatch, capsys):
    """A second driver on a live run would load a model replica on every worker (beside the live
    driver's, on a shared GPU) only to be refused; a bad --lock-timeout likewise, and for a new
    run after its folder was made."""
    from longrope.search.plan import Plan

    cfg = tmp_path / "c.toml"
    cfg.write_text(small_cfg()[1])
    run_dir = tmp_path / "run"
    assert main(["search", str(cfg), "--run-dir", str(run_dir), "--quiet", "--max-evals", "8"]) == 0
    started = []
    monkeypatch.setattr(Plan, "start_backend", lambda self: started.append(1))
    forge(run_dir / "run.lock", host="node-c", age=3)
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--quiet", "--max-evals", "16"]) == 75  # busy: try again later
    assert "in use by pid 4242 on node-c" in capsys.readouterr().err and not started
    assert main(["search", str(cfg), "--run-dir", str(tmp_path / "new"), "--quiet", "--lock-timeout", "0.1"]) == 2
    assert "--lock-timeout must be more than" in capsys.readouterr().err
    assert not started and not (tmp_path / "new").exists()


def test_resume_from_another_host_after_preemption(tmp_path, capsys, quick_heartbeat):
    """Preempted on node-b (its lock left behind): a resume waits for nobody once the heartbeat
    is older than --lock-timeout, and ends where an uninterrupted search ends."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(small_cfg()[1])
    ref, run_dir = tmp_path / "ref", tmp_path / "run"
    assert main(["search", str(cfg), "--run-dir", str(ref), "--quiet", "--max-evals", "24"]) == 0
    assert main(["search", str(cfg), "--run-dir", str(run_dir), "--quiet", "--max-evals", "12"]) == 0
    forge(run_dir / "run.lock", age=30)
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--quiet", "--max-evals", "24"]) == 75  # 30 s < 60 s: live
    assert "in use by pid 4242 on node-b" in capsys.readouterr().err
    assert main(["resume", str(run_dir), "--quiet", "--max-evals", "24", "--lock-timeout", "20"]) == 0
    err = capsys.readouterr().err  # 30 s and the two searches' time: 31 s on a loaded machine
    assert re.search(r"no heartbeat for 3\d s \(> --lock-timeout 20 s\), nor while watched for 0.4 s", err), err
    assert trajectory(Run.open(run_dir)) == trajectory(Run.open(ref)) and not (run_dir / "run.lock").exists()


def test_status_says_who_drives_the_run(tmp_path, capsys):
    """`status` reads the lease: nobody, a live driver, one silent past the timeout, one whose
    process is gone from this host; --json carries the same."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(small_cfg(iterations=0)[1])
    run_dir = tmp_path / "run"
    assert main(["search", str(cfg), "--run-dir", str(run_dir), "--quiet"]) == 0
    lock, dead = run_dir / "run.lock", subprocess.Popen(["true"])
    dead.wait()
    cases = [(None, "driver: none running (the run is finished)", None),
             (dict(age=3), "driver: pid 4242 on node-b, heartbeat 3 s ago", "live"),
             (dict(age=20), "heartbeat 20 s ago (late: renewed every 5 s; stopped or stalled?)", "live"),
             (dict(age=300), "driver: pid 4242 on node-b silent for 300 s (> its --lock-timeout 60 s", "silent"),
             (dict(age=300, timeout=600.0), "driver: pid 4242 on node-b, heartbeat 300 s ago", "live"),
             (dict(host=socket.gethostname(), pid=dead.pid), f"driver: pid {dead.pid} on", "gone"),
             ({"pid": 5}, "driver: pid 5 on node-c silent (its lock has no heartbeat)", "silent")]  # crashed
    for forged, line, state in cases:
        if forged == {"pid": 5}:
            lock.write_text(json.dumps({"host": "node-c", "pid": 5}))
        elif forged is not None:
            forge(lock, **forged)
        capsys.readouterr()
        assert main(["status", str(run_dir)]) == 0
        assert line in capsys.readouterr().out.splitlines()[1]
        assert main(["status", str(run_dir), "--json"]) == 0
        driver = json.loads(capsys.readouterr().out)["driver"]
        assert (driver is None) if state is None else (driver["state"] == state)
    # a trial the gone driver left running is not running: the resume re-queues it
    import optuna

    (study,) = Run.open(run_dir).studies()
    optuna.load_study(study_name=study.study_name, storage=study._storage).ask()
    assert main(["status", str(run_dir)]) == 0
    assert "left running 1 (re-queued on resume)" in capsys.readouterr().out
    forge(lock, age=3)
    assert main(["status", str(run_dir)]) == 0
    assert ", running 1, " in capsys.readouterr().out
    forge(lock, host=socket.gethostname(), pid=dead.pid)
    # the driver gone mid fine-tune (killed at step 87): ETAs are for a resume, which continues
    # from the checkpoint, not from the last step shown
    (run_dir / "finetune" / "ft-64").mkdir(parents=True)
    (run_dir / "finetune" / "ft-64" / "progress.json").write_text(json.dumps(
        {"length": 64, "step": 87, "steps": 200, "loss": 3.0, "checkpoint_step": 80, "eta_seconds": 60}))
    assert main(["status", str(run_dir)]) == 0
    assert "finetune-64: step 87/200 (checkpoint at step 80), loss 3.0000 (last step), ETA 1.1 min once " \
        "resumed" in capsys.readouterr().out  # 120 steps from step 80 at 60 s / 113 a step


def test_sigterm_while_a_resume_watches_a_stale_lock_exits_143(tmp_path, monkeypatch, capsys):
    """A resume watches a stale lock for two heartbeats before it takes it: a scheduler's SIGTERM
    there exited 130 with a bare "interrupted" (read as a user's Ctrl-C, not a preemption)."""
    import signal

    from longrope.search import config
    from longrope.search.driver import run_search

    cfg = tmp_path / "c.toml"
    cfg.write_text(small_cfg()[1])
    run_dir = tmp_path / "run"
    assert main(["search", str(cfg), "--run-dir", str(run_dir), "--quiet", "--max-evals", "12"]) == 0
    forge(run_dir / "run.lock", host="node-c", age=600)

    def watch(self):  # its wait of two heartbeats, cut short by the scheduler
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(Lease, "watch", watch)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as stopped:
            run_search(config.load(cfg), str(run_dir), resume=True, progress=False)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert stopped.value.code == 143 and "interrupted (SIGTERM) while taking the run's lock" in capsys.readouterr().err
    assert json.loads((run_dir / "run.lock").read_text())["host"] == "node-c"  # not taken


def test_status_calls_a_run_finished_only_once_its_held_out_score_is_in(tmp_path, monkeypatch, capsys):
    """Interrupted while it scored the best on held-out text (minutes to hours at long L), or with
    that scoring failed, the run read "finished" in `status`; a resume does that work."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(small_cfg()[1])
    run_dir = tmp_path / "run"
    monkeypatch.setattr(Driver, "evaluate_heldout", lambda self, stage, factors: None)  # failed
    assert main(["search", str(cfg), "--run-dir", str(run_dir), "--quiet", "--max-evals", "12"]) == 0
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "an unfinished run continues with: longrope resume" in out and "held-out score to come" in out, out
    monkeypatch.undo()
    assert main(["resume", str(run_dir), "--quiet", "--max-evals", "12"]) == 0
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "(the run is finished)" in out and "12/12 evals" in out and out.count(", done") == 1, out


def test_a_dead_holder_whose_clock_ran_ahead_is_taken_over_after_a_watch(tmp_path, capsys):
    """A heartbeat 1 h in the future read as -3586 s old: never stale, the run blocked for the
    clock difference plus the timeout. It is old by as much, and taken once seen unchanged."""
    lock = tmp_path / "run.lock"
    forge(lock, age=-3600)
    with Lease(lock, timeout=60, interval=0.05) as lease:
        assert json.loads(lock.read_text())["token"] == lease.me["token"]
    assert "taking over the lock of pid 4242 on node-b: no heartbeat for 3600 s" in capsys.readouterr().err


def test_a_live_holder_rewrites_an_emptied_lock_and_keeps_the_run(tmp_path, capsys):
    """An emptied run.lock (a stray write, a truncating tool) was left empty by its live holder,
    whose beat skipped unreadable locks: a resume watched it stay empty, took the run over, and
    the healthy driver stopped saying it had been unresponsive."""
    lock = tmp_path / "run.lock"
    with Lease(lock, timeout=1.0, interval=0.1) as lease:
        lock.write_text("")
        time.sleep(0.35)
        assert json.loads(lock.read_text())["token"] == lease.me["token"]
        with pytest.raises(UserError, match="is in use by pid"):
            Lease(lock, timeout=1.0, interval=0.1).acquire()
        lease.check()
        assert not lease.lost


def test_a_guard_left_by_an_acquirer_killed_on_this_host_is_taken_at_once(tmp_path, monkeypatch):
    """A kill -9 inside an acquisition left run.lock.guard, empty: every resume and search said
    'another driver is acquiring ... right now' (exit 75) for --lock-timeout (60 s), while status
    said no driver ran. The guard names its acquirer now, and a dead one's goes at once."""
    from longrope.runs.lease import RunBusy, pid_space

    lock, guard = tmp_path / "run.lock", tmp_path / "run.lock.guard"
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    guard.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead), "pid_space": pid_space()}))
    (tmp_path / ".run.lock.0f0f.tmp").write_text("{")  # a killed holder's half-written lease goes too
    monkeypatch.setattr("longrope.runs.lease.GUARD_WAIT", 0.2)
    start = time.monotonic()
    lease = Lease(lock, timeout=60)
    lease.acquire()
    assert time.monotonic() - start < 1 and json.loads(lock.read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]
    with pytest.raises(RunBusy, match=rf"another driver \(pid {os.getpid()} on {socket.gethostname()}\) is "):
        with Lease(tmp_path / "other.lock", timeout=60)._guarded():  # a live acquirer's guard stands,
            with Lease(tmp_path / "other.lock", timeout=60)._guarded():  # named
                pass
    lease.release()


KILLED_WRITING_ITS_GUARD = """
import json, os, signal, sys
from pathlib import Path
from longrope.runs.lease import Lease
dumps = json.dumps
def kill(obj, *a, **k):  # kill -9 as the guard's owner is written
    if isinstance(obj, dict) and set(obj) == {"host", "pid", "pid_space"}:
        os.kill(os.getpid(), signal.SIGKILL)
    return dumps(obj, *a, **k)
json.dumps = kill
Lease(Path(sys.argv[1]), timeout=60).acquire()
"""


@pytest.mark.parametrize("how", ["killed", "left"])
def test_an_acquirer_killed_before_its_guard_named_it_does_not_block_the_next(tmp_path, monkeypatch, how):
    """A kill -9 (or a full disk) between the guard's exclusive create and the write of its owner left
    run.lock.guard empty: read as nobody's, never as a dead acquirer's, so every driver on the host got
    RunBusy (exit 75) until it was --lock-timeout old. A guard names its owner from the start now (a
    temp file linked into place); an empty one, fresh ("left": by an older version), goes at once."""
    lock, guard = tmp_path / "run.lock", tmp_path / "run.lock.guard"
    if how == "killed":
        r = subprocess.run([sys.executable, "-c", KILLED_WRITING_ITS_GUARD, str(lock)], capture_output=True)
        assert r.returncode == -signal.SIGKILL, r.stderr
        assert not guard.exists() or guard.read_text()  # never a guard without its owner
    else:
        guard.touch()
    monkeypatch.setattr("longrope.runs.lease.GUARD_WAIT", 0.2)
    start = time.monotonic()
    with Lease(lock, timeout=60) as lease:
        assert time.monotonic() - start < 1 and json.loads(lock.read_text())["token"] == lease.me["token"]
    assert list(tmp_path.iterdir()) == []  # nor the guard, nor a temp file, stays


def test_the_guard_without_hard_links_or_disk_space_excludes_and_leaves_nothing(tmp_path, monkeypatch):
    """Where os.link fails (EPERM: no hard links) the guard is an exclusive create, still naming its
    acquirer and still excluding a second; a full disk while the owner is written leaves no guard."""
    from longrope.runs.lease import RunBusy

    def no_link(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr("longrope.runs.lease.GUARD_WAIT", 0.2)
    guard = tmp_path / "run.lock.guard"
    with pytest.raises(RunBusy, match=rf"another driver \(pid {os.getpid()} on {socket.gethostname()}\) is "):
        with Lease(tmp_path / "run.lock", timeout=60)._guarded():
            assert json.loads(guard.read_text())["pid"] == os.getpid()
            with Lease(tmp_path / "run.lock", timeout=60)._guarded():
                pass
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    fds = len(os.listdir("/proc/self/fd"))

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)  # the owner's, into its temp file (before: into the guard)
    with pytest.raises(OSError, match="No space"):
        with Lease(tmp_path / "run.lock", timeout=60)._guarded():
            pass
    assert list(tmp_path.iterdir()) == [] and len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.parametrize("pid", [0, -1, None, "123", True])
def test_no_pid_that_could_not_be_a_process_reads_alive(pid):
    """os.kill(0, 0) signals the caller's own process group and succeeds: a lock or temp file
    naming pid 0 (a torn or hand-made one) read as held by a live process, never taken over."""
    from longrope.spaces.files import pid_alive

    assert pid_alive(pid) is False
    assert pid_alive(os.getpid()) is True


def test_a_client_clock_ahead_of_the_file_server_does_not_take_a_live_guard(tmp_path, monkeypatch):
    """A guard's age is its mtime, which the file server stamps on NFS: a client whose clock ran ahead
    of the server's by more than the timeout took a live acquirer's fresh guard for a killed one's,
    removed it and went in beside it (two drivers writing run.lock). The age is now read on the
    server's clock (the mtime of a file made just now), and the probe file leaves nothing behind."""
    from longrope.runs import lease as lease_module
    from longrope.runs.lease import RunBusy

    monkeypatch.setattr(lease_module, "GUARD_WAIT", 0.2)
    real = time.time
    with Lease(tmp_path / "run.lock", timeout=60)._guarded():
        monkeypatch.setattr(time, "time", lambda: real() + 1000)  # this client, 1000 s ahead
        with pytest.raises(RunBusy, match="is acquiring"):
            with Lease(tmp_path / "run.lock", timeout=60)._guarded():
                pass
        monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
