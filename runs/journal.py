"""The run's journal backend: Optuna's file journal, with its appends shielded from Ctrl-C.

A driver's signal handler raises KeyboardInterrupt wherever the main thread happens to be.
Inside Optuna's append (JournalFileBackend.append_logs), between the lock file's creation and
the `try` that removes it (`get_lock_file`), that leaves the lock file behind: the re-queue that
follows the interrupt then waited out Optuna's 30-second grace period, and a lock released late
by the abandoned context manager's finaliser took the re-queue's own lock with it ("did not
possess lock", a traceback on exit). So a signal that lands during an append is held until the
append has released its lock (`hold`), and raised then: the append is milliseconds, the same
driver is the only writer (run.lock), and a line is either written whole or not at all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

_local = threading.local()  # per thread: a signal handler runs in the main thread, and only
# that thread's append is the one the handler would break into


def hold(callback: Callable[[], None]) -> bool:
    """For a signal handler: when this thread is inside a journal append, run `callback` (which
    raises) right after the append and return True; otherwise return False (raise now)."""
    if getattr(_local, "depth", 0) == 0:
        return False
    _local.pending = callback
    return True


class Journal(JournalFileBackend):
    """JournalFileBackend with the O_EXCL lock file (JournalFileOpenLock: NFSv3 and later, as
    before) and appends that a signal does not break into."""

    def __init__(self, path: str) -> None:
        super().__init__(path, lock_obj=JournalFileOpenLock(path))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            super().append_logs(logs)
        finally:
            _local.depth -= 1
            pending, _local.pending = getattr(_local, "pending", None), None
        # reached only when the append succeeded: after a failed one (a full disk) its error is
        # the one to see, and the signal's handler has recorded that it came
        if pending is not None:
            pending()
