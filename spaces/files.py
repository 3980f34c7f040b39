"""Files written so that a crash leaves the old version or the new one, never half of either.

Run folders, exports, reports and the fine-tune's progress and checkpoints all write through
here (a reader such as `longrope status` may look at any moment, and kill -9 may come at any).
And the sections a driver's Ctrl-C or SIGTERM waits for (`uninterrupted`).
"""

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

_held = threading.local()  # per thread: the handler runs in the main thread, and breaks into its work


@contextmanager
def uninterrupted() -> Iterator[None]:
    """A section a driver's signal waits for: the handler (search/stopping.py) raises its
    KeyboardInterrupt wherever the main thread is, and raised between a file's creation and the
    `try` that removes it, it leaves the file (Optuna's journal lock, run.lock's guard, a temp
    file, a run folder without its journal). Sections nest; a signal is raised once the outermost
    has ended, unless it ended in an error (that error is the one to see; the handler recorded
    the signal). Only for short work: the signal waits for all of it."""
    _held.depth = getattr(_held, "depth", 0) + 1
    try:
        yield
    finally:
        _held.depth -= 1
        pending = None
        if _held.depth == 0:
            pending, _held.pending = getattr(_held, "pending", None), None
    if pending is not None:
        pending()


def hold_signal(stop: Callable[[], None]) -> bool:
    """For a signal handler: inside an `uninterrupted` section of this thread, call `stop` (which
    raises) when it ends and return True; outside one, return False (raise now)."""
    if getattr(_held, "depth", 0) == 0:
        return False
    _held.pending = stop
    return True


def atomic_write_text(path: Path, text: str) -> None:
    """Temp file in the same folder, fsync, os.replace: a reader sees the old
    file or the new one, never half of either; on error the old file stays."""
    atomic_write_bytes(path, text.encode())


def file_clock(folder: Path, prefix: str, suffix: str = ".tmp") -> float:
    """Now by the clock that stamps files in `folder`: on NFS the server's, which a client's can run
    ahead of by more than a timeout, so a file's age is judged on that clock alone (the mtime of a
    file made just now, named `prefix`PID`suffix` for remove_stale_temps); this host's if none can
    be made there."""
    probe = Path(folder) / f"{prefix}{os.getpid()}{suffix}"
    try:  # made anew: a leftover of this pid's (a killed process's, the pid reused) keeps its old mtime
        probe.unlink(missing_ok=True)
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except OSError:
        return time.time()
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def stale_temp_files(folder: Path, suffix: str = ".tmp") -> list[Path]:
    """Temp files of atomic writes whose writer died (kill -9 between write and rename): the pid
    in the name (atomic_write_bytes' ".NAME.PID.tmp", or another `suffix`) runs no more here, or
    the file is an hour old (a writer on another host). A live writer's, another report's or
    export's running beside this one, stays."""
    out = []
    for p in Path(folder).glob(f".*{suffix}"):
        pid = p.name.rsplit(".", 2)[-2]
        try:
            old = time.time() - p.stat().st_mtime > 3600
        except OSError:  # gone meanwhile: its writer renamed it
            continue
        if old or not (pid.isdigit() and pid_alive(int(pid))):
            out.append(p)
    return out


def remove_stale_temps(folder: Path, *prefixes: str, suffix: str = ".tmp") -> None:
    """Remove what writers killed mid-write left in `folder` (stale_temp_files) under a name that
    starts with one of `prefixes` (".NAME." for writes to NAME): ours only, since an output folder
    given with -o may hold other programs' temp files. A folder (a model copy built beside its
    output) goes whole."""
    for stale in stale_temp_files(folder, suffix):
        if not stale.name.startswith(prefixes):
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def pid_space() -> str:
    """Where this process's pid means something: the boot and the pid namespace. Containers on
    one host (Docker with --network host, a pod rescheduled under its old name) share a hostname,
    not their pids: a holder's pid absent here is not a dead holder there."""
    parts = []
    for path, read in (("/proc/sys/kernel/random/boot_id", lambda p: Path(p).read_text().strip()),
                       ("/proc/self/ns/pid", os.readlink)):
        try:
            parts.append(read(path))
        except OSError:
            parts.append("")
    return ":".join(parts)


def pid_alive(pid: object) -> bool:
    """Whether a process `pid` runs on this host (in this pid namespace); no pid, or none that
    could be one, is not alive."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:  # JSON's true is no pid 1
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # someone else's
        return True
    return True


def make_folder(path: Path, what: str = "folder") -> Path:
    """`path` as a folder (made with its parents when missing), or one line saying why not: an
    output path under a file, a read-only mount, no permission. Output folders are made through
    here before the work that fills them, so a bad -o costs nothing."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file where the folder or a parent should be
        raise UserError(f"cannot create {what} {path}: a file is in the way") from None
    except OSError as e:
        raise UserError(f"cannot create {what} {path}: {e.strerror or e}") from None
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """A symlink's target is written (the link stays), and a path that is no regular file (a
    FIFO, /dev/stdout: `export -o /dev/stdout`) is written through: os.replace put a regular
    file in its place (as root, /dev/stdout itself)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        target = Path(os.path.realpath(path))
        if not target.is_file():
            try:
                with open(path, "wb") as f:
                    f.write(data)
            except OSError as e:
                raise UserError(f"cannot write {path}: {e.strerror or e}") from None
            return
        path = target
    with uninterrupted():  # a signal between the temp file's creation and its rename left it
        _atomic_write_bytes(path, data)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        kept = "; the previous version is intact" if path.is_file() else ""  # a folder, nothing yet
        raise UserError(f"cannot write {path}: {e.strerror or e}{kept}") from None
