"""run.lock as a lease, not a pid lock: one driver per run, across hosts.

A cluster scheduler preempts a driver on node A and restarts it on node B; a pid means
nothing on B, and nobody is there to delete the lock by hand. So the lock says who holds it
and when it last proved it was alive:

    run.lock = {"host": ..., "pid": ..., "heartbeat": <Unix time>, "started": ..., "token": ...}

The live driver rewrites the heartbeat every `interval` seconds (5; the issue asks <= 10) from
a daemon thread. A driver that finds the lock

- held by a dead process on its own host: takes it over with a warning;
- with a heartbeat older than `timeout` (60 s; `--lock-timeout`) by this host's clock, or unreadable:
  watches it for two heartbeats first, and takes it over only if it did not move (or stayed unreadable). The
  age compares two hosts' clocks, which can differ by more than the timeout, and a read can fail for a
  moment on a shared file system; a live holder rewrites its lease within the watch either way;
- otherwise: refuses in one line, naming the host, the pid and the heartbeat's age.

Every acquisition (create or take over) runs under a second file, ``run.lock.guard``, that names its
acquirer from the start (a temp file hard-linked to its name, which fails on an existing one): of two
resumers that find the same stale lock only the first inside the guard writes; the second then reads a fresh
lease and refuses. The lease itself is written to a temp file and renamed over run.lock (atomic on POSIX and
on NFS), so a reader never sees half of it. The holder only refreshes or removes a lock that still carries
its token: one that was taken over while it hung (SIGSTOP, a long GC pause, a stalled file system) is left
to the new holder, and `lost` says so. The driver calls `check()` before each write to the run, so a holder
that wakes up after a take-over stops without writing again: two drivers never write one journal. Work the
driver runs elsewhere (a fine-tune as a Ray task) carries a `Ticket`, the lease's path and token, and checks
it the same way before each of its writes.

A timeout of two heartbeats or less would let a second driver take a live lease over, so it is refused.
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from shlex import quote

from longrope.spaces import UserError
from longrope.spaces.files import file_clock, pid_alive, pid_space, remove_stale_temps, uninterrupted

LOCK_TIMEOUT = 60.0  # seconds without a heartbeat after which a lease may be taken over
HEARTBEAT = 5.0  # seconds between the holder's refreshes
GUARD_WAIT = 5.0  # how long an acquirer waits for another one's guard before refusing


class LeaseLost(UserError):
    """Another driver took this one's lease over while it was unresponsive."""


class RunBusy(UserError):
    """Another driver holds the run, or is taking it, just now: worth trying again later (exit 75,
    EX_TEMPFAIL), unlike a user error (exit 2) that a retry would only repeat."""


class Lease:
    """Context manager: acquire on enter (or raise UserError), heartbeat while held, release."""

    def __init__(self, path: Path, timeout: float = LOCK_TIMEOUT, interval: float | None = None):
        interval = HEARTBEAT if interval is None else interval
        if not 0 < timeout < math.inf:  # inf: a guard left by a killed acquirer would block for ever
            raise UserError(f"--lock-timeout must be a positive, finite number of seconds, got {timeout}")
        if timeout <= 2 * interval:  # a live holder's heartbeat may be one interval old, and late
            raise UserError(f"--lock-timeout must be more than {2 * interval:g} s (two heartbeats of "
                            f"{interval:g} s), or a live driver's lock could be taken over; got {timeout:g}")
        self.path, self.timeout, self.interval = Path(path), float(timeout), interval
        self.guard = self.path.with_name(self.path.name + ".guard")
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "pid_space": pid_space(),
                   "heartbeat": time.time(), "started": time.time(), "token": uuid.uuid4().hex,
                   "timeout": self.timeout}  # status judges the holder by its own
        self.lost = False
        self._links: bool | None = None  # whether hard links work in the run folder (_make_guard)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading and writing the lease --------------------------------------------------------
    def read(self) -> dict | None:
        """The lease on disk (read_lease: {} when unreadable, None when absent)."""
        return read_lease(self.path)

    def _write(self) -> None:
        self.me["heartbeat"] = time.time()
        tmp = self.path.with_name(f".{self.path.name}.{self.me['token']}.tmp")
        tmp.write_text(json.dumps(self.me))
        os.replace(tmp, self.path)

    @staticmethod
    def dead_here(other: dict) -> bool:
        """`other` was written by a process on this host that no longer runs."""
        here = pid_space()  # a lease written before it was recorded: this host's, as then
        return (other.get("host") == socket.gethostname() and other.get("pid_space", here) == here
                and not pid_alive(other.get("pid")))

    def stale(self, other: dict, watched: dict | None = None) -> str | None:
        """Why `other` may be taken over, or None while it is live. `watched`: the lease as it
        was two heartbeats ago (watch()); one old by the clock is taken only if it is unchanged."""
        if not other:  # taken only if it stayed unreadable through a watch
            return f"taking over an unreadable lock file {self.path}" if watched == {} else None
        if self.dead_here(other):
            return f"taking over a stale lock of dead process {other.get('pid')} on this host"
        age, limit = lease_age(other), self.limit(other)
        if age > limit and other == watched:
            return (f"taking over the lock of pid {other.get('pid')} on {other.get('host')}: no "
                    f"heartbeat for {age:.0f} s (> --lock-timeout {limit:g} s), nor while "
                    f"watched for {2 * self.interval:g} s")
        return None

    def limit(self, other: dict) -> float:
        """How long `other` may stay silent before it is taken over: the longer of this driver's
        --lock-timeout and its holder's. A holder given a long one (a slow shared file system)
        keeps writing until its own runs out (_stalled), so a shorter one here would let two
        drivers write; `status` calls it live until then too."""
        return max(self.timeout, recorded_timeout(other) or 0.0)

    # -- acquire, heartbeat, release ----------------------------------------------------------
    def watch(self) -> dict | None:
        """The lease as found, after two heartbeats of waiting, when it is unreadable or looks
        stale by this host's clock (else None: nothing to watch)."""
        seen = self.read()
        if seen is None or (seen and (self.dead_here(seen) or lease_age(seen) <= self.limit(seen))):
            return None
        time.sleep(2 * self.interval)
        return seen

    def acquire(self) -> None:
        watched = self.watch()  # outside the guard: other acquirers are not kept waiting
        with uninterrupted(), self._guarded():  # a signal inside left the guard, or a lease unbeaten
            other = self.read()
            if other is not None:
                why = self.stale(other, watched)
                if why is None and not other:
                    raise RunBusy(f"{self.path} could not be read just now; try again")
                if why is None:
                    raise self._in_use(other)
                print(f"warning: {why}", file=sys.stderr)
            self._write()
            for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # a killed holder's half write
                if self.me["token"] not in tmp.name:
                    tmp.unlink(missing_ok=True)
            remove_stale_temps(self.path.parent, f".{self.guard.name}.", suffix=".owner")  # _make_guard's
            self._beaten = time.monotonic()  # the last refresh that landed (_stalled)
            self._thread = threading.Thread(target=self._beat, name="run.lock heartbeat", daemon=True)
            self._thread.start()

    def _in_use(self, other: dict) -> RunBusy:
        age, limit = lease_age(other), self.limit(other)
        skew = (f"; it moved while watched although by this host's clock it is {age:.0f} s "
                "old: the two hosts' clocks differ" if age > limit else "")
        return RunBusy(f"{self.path.parent} is in use by pid {other.get('pid')} on "
                       f"{other.get('host')} (heartbeat {age:.0f} s ago, "
                       f"{self.path}){skew}; one driver per run; a lock silent for --lock-timeout "
                       f"({limit:g} s, the longer of this one's and its holder's) is taken over")

    def precheck(self) -> None:
        """acquire()'s refusal of a live lease, without waiting or writing: a driver asks before
        it loads the model on its workers, which a refused resume would do for nothing (and on a
        shared GPU beside the live driver's replicas). acquire() decides for good later."""
        other = self.read()
        if other and not self.dead_here(other) and lease_age(other) <= self.limit(other):
            raise self._in_use(other)

    @contextmanager
    def _guarded(self):
        """Hold run.lock.guard (naming its acquirer) for one acquisition. One left by an acquirer killed
        inside it goes once older than the timeout, or at once on its host; an empty one (a kill inside
        an exclusive create: an older version's, or one without hard links) at once where links work."""
        deadline = time.time() + GUARD_WAIT
        while (made := self._make_guard()) is None:
            try:
                seen = self.guard.stat()  # a killed acquirer's: old, or its pid gone here, or empty
                gone = self.dead_here(read_lease(self.guard) or {}) or (self._links and not seen.st_size)
                if gone or file_clock(self.guard.parent, f".{self.guard.name}.clock.", ".owner") \
                        - seen.st_mtime > self.timeout:  # its age on the file server's clock, asked last
                    self._remove_stale_guard(seen)
                    continue
            except FileNotFoundError:
                continue
            if time.time() > deadline:
                who = f" (pid {w['pid']} on {w['host']})" if (w := read_lease(self.guard)) else ""
                raise RunBusy(f"another driver{who} is acquiring {self.path} right now "
                              f"({self.guard} exists); try again") from None
            time.sleep(0.05)
        try:
            yield
        finally:
            if _same_file(self.guard, made):  # not a guard that replaced it after a (rare) mix-up
                self.guard.unlink(missing_ok=True)

    def _make_guard(self) -> os.stat_result | None:
        """The guard made with its owner in it, or None when it exists: a temp file hard-linked to its name
        (atomic, failing like O_EXCL on an existing name); without links, as rundir._claim does."""
        tmp = self.guard.with_name(f".{self.guard.name}.{uuid.uuid4().hex[:12]}.{os.getpid()}.owner")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, json.dumps({k: self.me[k] for k in ("host", "pid", "pid_space")}).encode())
            try:
                os.link(tmp, self.guard)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
                    raise
                os.close(os.open(self.guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                os.replace(tmp, self.guard)  # a kill before it leaves the guard empty
            return os.fstat(fd)  # the guard's inode, either way
        except FileExistsError:
            if self._links is None:  # where links work, only a kill leaves a guard empty
                with suppress(OSError):
                    os.link(tmp, tmp.with_suffix(".link.owner"))
                self._links = tmp.stat().st_nlink > 1
            return None
        finally:
            os.close(fd)
            tmp.with_suffix(".link.owner").unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)

    def _remove_stale_guard(self, seen: os.stat_result) -> None:
        """Remove the guard found stale (`seen`), and only that file. Two acquirers can find the
        same stale guard; the first removes it and makes its own, and a plain unlink by the second
        then removed that fresh guard, leaving both inside. So it is renamed to a name of this
        acquirer's own (atomic: of two renames one finds nothing), and a file that turns out not to
        be the stale one is linked back (link never replaces an existing guard)."""
        claimed = self.guard.with_name(f".{self.guard.name}.{self.me['token']}")
        try:
            os.rename(self.guard, claimed)
        except FileNotFoundError:
            return
        if not _same_file(claimed, seen):
            with suppress(FileExistsError):  # a third acquirer made one meanwhile: its guard stands
                os.link(claimed, self.guard)
        claimed.unlink(missing_ok=True)

    def mine(self) -> bool | None:
        """Whether run.lock still carries this lease's token (Ticket.held)."""
        return self.ticket().held()

    def ticket(self) -> Ticket:
        """What work running elsewhere (a fine-tune on a Ray node) needs to check this lease."""
        return Ticket(str(self.path.absolute()), self.me["token"])  # a node's folder is not ours

    def check(self) -> None:
        """Raise LeaseLost when another driver holds the run now (this one was taken over while it
        hung, or the lock was removed): the caller must stop before it writes to the run again."""
        if self.lost:
            raise LeaseLost(self.why_lost())
        try:
            self.ticket()()
        except LeaseLost:
            self.lost = True
            raise

    def why_lost(self) -> str:
        """Why this driver no longer holds the run, once `lost`: taken over, or (its lease still
        in run.lock) stopped by its own stall, with nobody continuing the search."""
        other = self.read()
        if self.ticket()._holds(other):
            return (f"{self.path.parent}: this driver was unresponsive for longer than --lock-timeout "
                    f"({self.timeout:g} s) and stopped writing to the run, in case another driver took it "
                    f"over; none did: `longrope resume {quote(str(self.path.parent))}` continues the search")
        return _lost(self.path, other)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            if self._stalled():  # silent past the timeout: a take-over may be under way
                return
            held = self.mine()
            if held is None:  # emptied, or a flaky read: rewritten as a watch expects of a live
                held = self._rewrite_unreadable()  # holder, in the guard (no take-over overwritten)
            if held is None:
                continue
            if not held:
                self.lost = True
                print(f"warning: {self.path} was taken over by another driver; this one no longer "
                      "holds the run", file=sys.stderr)
                return
            try:
                self._write()
            except OSError as e:  # a full or flaky disk: the next beat tries again
                print(f"warning: cannot refresh {self.path}: {e}", file=sys.stderr)
                continue
            if self._stalled():  # the write itself hung past the timeout: it may have replaced the
                return  # lease of a driver that took over meanwhile, whose next beat then stops it
            self._beaten = time.monotonic()

    def _rewrite_unreadable(self) -> bool | None:
        try:
            with self._guarded():
                if self.read() == {}:
                    self._write()
        except (UserError, OSError):  # an acquirer in the guard, or a flaky disk: the next beat
            return None
        return self.mine()

    def _stalled(self) -> bool:
        """True (and the lease lost) when this driver's last refresh is older than the timeout by
        its own monotonic clock: the lease looked stale to everyone else, and one check-then-write
        cannot exclude a take-over in between. Stopping both is safe; two drivers writing is not."""
        silent = time.monotonic() - self._beaten
        if silent <= self.timeout:
            return False
        self.lost = True
        print(f"warning: {self.path} was not refreshed for {silent:.0f} s (> --lock-timeout "
              f"{self.timeout:g} s; a stalled file system or process): another driver may have taken "
              "the run over, so this one stops writing to it; `longrope resume` continues the run",
              file=sys.stderr)
        return True

    def release(self) -> None:
        with uninterrupted():  # a signal inside left run.lock for the next driver to take over
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            if self.mine():
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> Lease:
        if self._thread is None:  # not acquired yet (a caller may take it first, to word its signals)
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass(frozen=True)
class Ticket:
    """A driver's proof of holding the run, as plain data: it pickles to a Ray task (the run folder
    is on a file system every node sees, or the task could not write there). Calling it reads
    run.lock and raises LeaseLost when the lock carries another token or is gone; a lock that
    cannot be read just now passes (the next call decides, as for the heartbeat). The work calls
    it before each write to the run, so a fine-tune whose driver was taken over stops at its next
    checkpoint instead of writing into the new holder's."""

    path: str
    token: str

    def held(self) -> bool | None:
        """Whether run.lock still carries this token; None when it cannot be read just now (a
        transient file-system error: the next look decides)."""
        return self._holds(read_lease(Path(self.path)))

    def _holds(self, other: dict | None) -> bool | None:
        return None if other == {} else other is not None and other.get("token") == self.token

    def __call__(self) -> None:
        other = read_lease(Path(self.path))  # one read: the verdict and the message agree
        if self._holds(other) is False:
            raise LeaseLost(_lost(Path(self.path), other))


def _lost(path: Path, other: dict | None) -> str:
    if not other:  # removed by hand (or by a cleanup script): nobody continues the run
        return (f"{path.parent}: this driver's lock {path.name} was removed while it ran; stopping "
                "without writing to the run again (nobody holds it now: `longrope resume "
                f"{path.parent}` continues the search)")
    return (f"{path.parent}: this driver's lock is now held by pid {other.get('pid')} on "
            f"{other.get('host')}: it was taken over while this driver was unresponsive; stopping "
            "without writing to the run again (the driver holding it continues the search)")


def _same_file(path: Path, st: os.stat_result) -> bool:
    """Whether `path` is the file `st` was taken of (an inode number alone is reused at once)."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    return (now.st_ino, now.st_dev, now.st_mtime_ns) == (st.st_ino, st.st_dev, st.st_mtime_ns)


def read_lease(path: Path) -> dict | None:
    """The lease at `path`; {} when unreadable (a stray write, a flaky read); None when absent."""
    try:
        other = json.loads(Path(path).read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return other if isinstance(other, dict) and other.get("host") and other.get("pid") else {}


def lease_age(other: dict) -> float:
    """Seconds since `other` last beat, by this host's clock (a lock from before heartbeats: since
    it started). A heartbeat ahead of this clock counts as old by as much: a dead holder whose
    clock ran ahead is then taken over once a watch sees it unchanged, as a live one would not be."""
    beat = other.get("heartbeat", other.get("started"))
    return abs(time.time() - beat) if isinstance(beat, (int, float)) else float("inf")


def recorded_timeout(other: dict) -> float | None:
    """The --lock-timeout the holder of lease `other` runs with; None in one from before it was kept."""
    timeout = other.get("timeout")
    return float(timeout) if isinstance(timeout, (int, float)) and 0 < timeout < math.inf else None
