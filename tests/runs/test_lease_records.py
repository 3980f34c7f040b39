"""run.lock records a lease may meet: an infinite recorded timeout, no host or pid, a holder's longer
timeout, an unreadable lock at release: cases no test held."""

import json
import time

import pytest


def _forge(path, age, **extra):
    path.write_text(json.dumps({"host": "node-b", "pid": 4242, "heartbeat": time.time() - age,
                                "started": time.time() - 3600, "token": "theirs", **extra}))


def test_a_lock_recording_an_infinite_timeout_is_still_taken_over(tmp_path):
    """A lease whose recorded timeout is inf (json writes Infinity) must not make it immortal."""
    from longrope.runs.lease import Lease, read_lease, recorded_timeout

    lock = tmp_path / "run.lock"
    _forge(lock, age=300, timeout=float("inf"))
    other = read_lease(lock)
    assert recorded_timeout(other) is None
    assert Lease(lock, timeout=60).stale(other, watched=dict(other)) is not None


def test_a_lock_without_host_or_pid_is_unreadable_not_a_lease(tmp_path):
    from longrope.runs.lease import Ticket, read_lease

    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps({"token": "mine", "heartbeat": time.time()}))
    assert read_lease(lock) == {}
    assert Ticket(str(lock), "mine").held() is None


def test_precheck_honours_the_holders_longer_timeout(tmp_path):
    """A holder with --lock-timeout 300, silent 90 s, is live: precheck must refuse before the
    model is loaded (acquire would refuse later anyway)."""
    from longrope.runs.lease import Lease, RunBusy

    lock = tmp_path / "run.lock"
    _forge(lock, age=90, timeout=300.0)
    with pytest.raises(RunBusy, match="in use by pid 4242"):
        Lease(lock, timeout=60).precheck()


def test_release_leaves_a_lock_it_cannot_read(tmp_path):
    from longrope.runs.lease import Lease

    lock = tmp_path / "run.lock"
    lease = Lease(lock, timeout=1000, interval=100)
    lease.acquire()
    lock.write_text("\0garbage")  # unreadable just now: not known to be ours
    lease.release()
    assert lock.exists()
