"""The run's journal backend: Optuna's file journal, its appends shielded from Ctrl-C.

A driver's signal handler raises KeyboardInterrupt wherever the main thread happens to be.
Inside Optuna's append (JournalFileBackend.append_logs), between the lock file's creation and
the `try` that removes it (`get_lock_file`), that left the lock file behind: the re-queue that
follows the interrupt then waited out Optuna's 30-second grace period, and a lock released late
by the abandoned context manager's finaliser took the re-queue's own lock with it ("did not
possess lock", a traceback on exit). So an append is `uninterrupted`: a signal that lands during
one is raised once its lock is released. An append is milliseconds, and the driver is the only
writer (run.lock), so the wait for Optuna's lock is too.
"""

from __future__ import annotations

from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from longrope.spaces.files import uninterrupted


class Journal(JournalFileBackend):
    """JournalFileBackend with the O_EXCL lock file (JournalFileOpenLock: NFSv3 and later, as
    before) and appends that a signal does not break into."""

    def __init__(self, path: str) -> None:
        super().__init__(path, lock_obj=JournalFileOpenLock(path))

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with uninterrupted():
            super().append_logs(logs)
