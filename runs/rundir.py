"""The run directory: creation, validation, the lock, the events log, the journal."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import tomllib
from pathlib import Path
from shlex import quote
from typing import TYPE_CHECKING, Any

from longrope.spaces import UserError, read_text
from longrope.spaces.files import (
    atomic_write_bytes,
    atomic_write_text,
    make_folder,
    remove_stale_temps,
    uninterrupted,
)

from .best import BestRecord
from .lease import LOCK_TIMEOUT, Lease, RunBusy
from .repair import is_record, refuse_unsafe_drop

if TYPE_CHECKING:
    import optuna

CONFIG, JOURNAL, LOCK, EVENTS = "config.toml", "journal.log", "run.lock", "events.log"
# a write to the run failing for its storage, not for a bug: the disk or quota full, a read-only remount
FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# ... and what a network file system says when its server fails or goes away (an NFS soft mount's
# timeout, a stale handle, a Lustre eviction: EIO) or the run's permissions change under it: each
# write after such a failure could land after a torn line, damaging the journal inside
STORAGE_ERRORS = (*FULL_OR_READ_ONLY, errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EACCES, errno.EPERM)


def rdb_storage(url: str):
    """Optuna's RDB storage at `url`, or one line on why it cannot be opened (no server, no
    driver, no such folder for a sqlite file). Opened before a run's directory is made, too."""
    import optuna
    from sqlalchemy.engine import make_url

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as e:  # SQLAlchemy's and the drivers' errors share no base class
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        shown = make_url(url).render_as_string(hide_password=True)  # the line may be pasted anywhere
        raise UserError(f"cannot open storage {shown!r}: {type(e).__name__}: {first}") from None


class Run:
    """A run directory and its frozen config."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # -- creation and validation ---------------------------------------------------
    @staticmethod
    def check_new(path: str | Path) -> None:
        """Refuse a path a new run cannot be created at, before anything is written."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise UserError(f"{p} exists and is not a directory; choose a new --run-dir")
        if p.exists() and not _cut_off(p):  # empty, or the skeleton a killed creation left
            raise UserError(f"{p} exists and is not empty; choose a new --run-dir or resume a run")
        parent = next(q for q in (p.absolute(), *p.absolute().parents) if q.exists())
        if not parent.is_dir():  # before the workers load the model, not after
            raise UserError(f"cannot create run directory {p}: {parent} is a file")
        if not os.access(parent, os.W_OK):
            raise UserError(f"cannot create run directory {p}: {parent} is not writable")

    @classmethod
    def create(cls, path: str | Path, config_text: str) -> Run:
        """A new run at `path`, which the caller found no run when it started (check_new); one
        made there since, by a driver started beside this one, is that driver's (RunBusy)."""
        p = Path(path)
        if (p / CONFIG).is_file() and (p / CONFIG).stat().st_size:
            raise _taken(p)
        cls.check_new(p)
        with uninterrupted():  # a signal half way left a folder neither `search` nor `resume` took
            make_folder(p / "best", "run directory")  # and the run directory with it
            make_folder(p / "export", "run directory")
            (p / JOURNAL).touch()
            (p / EVENTS).touch()
            if (p / CONFIG).is_file() and not (p / CONFIG).stat().st_size:  # a claim cut off (no links)
                (p / CONFIG).unlink()
            _claim(p / CONFIG, config_text)  # last: a folder with a config.toml is a whole run, and
        return cls(p)  # one a kill -9 left without it is taken by the next search (_cut_off)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """An existing run; anything else is one clear line and is left untouched."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise UserError(f"{p} is a file, not a run directory")
        if not p.is_dir():
            raise UserError(f"{p} is not a run directory (it does not exist)")
        cut = _cut_off(p, empty=False)
        if cut or not (p / CONFIG).is_file():
            why = (" (its creation was cut off before the search started: start the search again with "
                   "this --run-dir)") if cut else ""
            what = f"an empty {CONFIG}" if (p / CONFIG).is_file() else f"no {CONFIG}"
            raise UserError(f"{p} is not a run directory: {what}{why}")
        if not (p / JOURNAL).is_file():
            raise UserError(f"{p} is not a run directory: no {JOURNAL}")
        run = cls(p)
        cfg = run.config()  # parses, or says why not
        if not all(isinstance(v, dict) for v in cfg.values()) or "targets" not in cfg.get("space", {}):
            # another tool's config.toml beside an empty journal.log: status called it a finished run
            raise UserError(f"{p} is not a run directory: its {CONFIG} is not a run's (no [space] targets)")
        try:
            with open(p / JOURNAL, "rb") as f:
                f.read(1)
        except OSError as e:
            raise UserError(f"cannot read {p / JOURNAL}: {e.strerror or e}") from None
        return run

    def check_writable(self) -> None:
        """A driver writes the folder, the journal, the events log and best/: say which one it
        cannot, in one line, before it starts (read-only mounts, another user's run)."""
        for p in (self.path, self.journal, self.path / EVENTS, self.path / "best"):
            if p.exists() and not os.access(p, os.W_OK):
                raise UserError(f"cannot write {p} (permission denied); a search or resume needs the run "
                                "directory writable")

    def write_failed(self, e: OSError) -> UserError | None:
        """The one line for a write its storage refused (STORAGE_ERRORS) during a search, else
        None. Every result told before it is in the journal (a line the failed write tore is the
        last one, dropped on resume), so the run is where a kill -9 would have left it; a run
        that was being created has no journal yet and is started again."""
        if e.errno not in STORAGE_ERRORS:
            return None
        then = (f"then: longrope resume {quote(str(self.path))}" if self.is_run(self.path) else
                f"remove {self.path} and start the search again")
        where = e.filename or self.path
        if e.errno in FULL_OR_READ_ONLY:
            return UserError(f"cannot write {where}: {e.strerror}; every result told before is kept; free "
                             f"space (or remount it writable), {then}")
        return UserError(f"the run's storage failed at {where}: {e.strerror}; every result told before is "
                         f"kept; once the file system works again (its mount, its server, the run's "
                         f"permissions), {then}")

    @staticmethod
    def is_run(path: str | Path) -> bool:
        return (Path(path) / CONFIG).is_file() and (Path(path) / JOURNAL).is_file()

    def config_text(self) -> str:
        return read_text(self.path / CONFIG, "run config")

    def set_config(self, config_text: str) -> None:
        """Replace the frozen config (a driver holding the lock, with another budget or workers:
        what status, report and a later resume read), atomically."""
        atomic_write_text(self.path / CONFIG, config_text)

    def config(self) -> dict[str, Any]:
        """The run's frozen config. A run writes it whole when it starts, every section resolved:
        an empty one is damage, not "all defaults" (a resume searched a new default stage)."""
        try:
            cfg = tomllib.loads(self.config_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UserError(f"{self.path / CONFIG} is unreadable: {e}") from None
        if not cfg:
            raise UserError(f"{self.path / CONFIG} is empty; a run writes its whole config when it "
                            "starts: restore it from a copy (the run's own), or start a new --run-dir")
        return cfg

    # -- journal ---------------------------------------------------------------------
    @property
    def journal(self) -> Path:
        return self.path / JOURNAL

    def check_journal(self) -> None:
        """Every line but a torn last one must be a journal record: a damaged line elsewhere
        (a disk error, a stray write) is refused in one line naming it, before Optuna's replay
        would crash on it. `repair(keep_backup=True)` drops such lines."""
        bad = self.unreadable_lines()
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise UserError(f"{self.journal} line {bad[0]} is not a journal record{more}; "
                            f"`longrope resume {quote(str(self.path))} --repair` drops unreadable lines "
                            "(keeping a backup) and re-runs what they held")

    def unreadable_lines(self) -> list[int]:
        """1-based numbers of the lines that are not journal records: JSON objects with an
        op_code and every key Optuna's replay reads from it (repair.is_record); a torn last line,
        which repair_journal drops, is not counted. A whole last line (its newline written) that
        is not UTF-8 is: Optuna's replay skips a last line that is not JSON, not one it cannot
        decode (UnicodeDecodeError from inside it), so that is damage, not a torn write."""
        bad = []
        with open(self.journal, "rb") as f:
            lines = f.read().split(b"\n")
        last = len(lines) - 1 if lines and lines[-1] == b"" else len(lines)
        for n, line in enumerate(lines[:last], start=1):
            try:
                ok = is_record(json.loads(line))
            except json.JSONDecodeError:
                ok = n == last  # a torn last line is repair_journal's
            except UnicodeDecodeError:
                ok = n == len(lines)  # only torn without its newline, which Optuna does not decode
            if not ok:
                bad.append(n)
        return bad

    def drop_unreadable_lines(self) -> str | None:
        """`resume --repair`: a backup of the journal, then the journal without its unreadable
        lines. Lost results are re-run on resume (their trials are left RUNNING and re-queued); a
        line that may have held part of a trial finished after it is refused instead."""
        bad = self.unreadable_lines()
        if not bad:
            return None
        data = self.journal.read_bytes()
        refuse_unsafe_drop(bad, data.split(b"\n"))
        backup = self.journal.with_name(f"{JOURNAL}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(self.journal, backup)
        drop = set(bad)
        keep = [ln for n, ln in enumerate(data.split(b"\n"), start=1) if n not in drop]
        atomic_write_bytes(self.journal, b"\n".join(keep))
        lines = ", ".join(map(str, bad[:10]))
        return f"dropped {len(bad)} unreadable journal line(s) ({lines}); backup {backup.name}"

    def clear_leftovers(self) -> None:
        """What else a kill -9 leaves in the run folder: half a release of Optuna's journal lock
        (journal.log.lock<id>.rename), temp files of best/ and config.toml writes, a creation's
        claim; a resumed run's folder is then an uninterrupted one's. Only a driver holding
        run.lock calls this (as clear_stale_journal_lock), so no writer of these runs but dead ones."""
        for half in self.path.glob(f"{JOURNAL}.lock*.rename"):
            half.unlink(missing_ok=True)
        remove_stale_temps(self.path / "best", ".")
        remove_stale_temps(self.path, f".{CONFIG}.", f"..{CONFIG}.")  # set_config's, _claim's
        remove_stale_temps(self.path, f".{CONFIG}.", suffix=".claim")  # _claim's own, of a dead creator

    def clear_stale_journal_lock(self) -> bool:
        """Optuna's journal lock file left by a killed driver. Only a driver holding run.lock calls
        this, so no other writer can hold the journal lock: clearing it is safe, and spares the
        next resume a 30-second stall and four warnings."""
        stale = self.journal.with_name(JOURNAL + ".lock")
        if stale.exists():
            stale.unlink(missing_ok=True)
            return True
        return False

    def repair_journal(self) -> str | None:
        """Drop a torn last line (power loss mid-write) so appends stay well-formed."""
        data = self.journal.read_bytes()
        if not data:
            return None
        end = len(data)
        if not data.endswith(b"\n"):
            end = data.rfind(b"\n") + 1
        else:
            last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
            try:
                json.loads(data[last_start:])
            except json.JSONDecodeError:
                end = last_start
            except UnicodeDecodeError:  # not a torn write but damage: check_journal refuses it and
                pass  # `resume --repair` drops it, keeping a backup (unreadable_lines)
        if end == len(data):
            return None
        with open(self.journal, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        return f"dropped a torn last journal line ({len(data) - end} bytes)"

    def storage(self, url: str = ""):
        """The journal by default; an RDB URL (sqlite, postgresql, ...) when given."""
        import optuna

        if url:
            return rdb_storage(url)
        from .journal import Journal

        self.check_journal()
        return optuna.storages.JournalStorage(Journal(str(self.journal)))

    # -- lock and events -------------------------------------------------------------
    def lock(self, timeout: float = LOCK_TIMEOUT) -> Lease:
        """One driver per run: a lease with a heartbeat (runs/lease.py). A lock silent for
        `timeout` seconds, or left by a dead process on this host, is taken over."""
        return Lease(self.path / LOCK, timeout)

    def event(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path / EVENTS, "a") as f:
            f.write(f"{stamp} {message}\n")

    # -- studies and best records ---------------------------------------------------
    def studies(self) -> list[optuna.Study]:
        """The run's Optuna studies, one per stage, in the order the stages started, from its
        storage: the journal, or the RDB URL in the config's search.storage."""
        import optuna

        storage = self.storage(self.config().get("search", {}).get("storage", ""))
        return [optuna.load_study(study_name=s.study_name, storage=storage)
                for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]

    def best_path(self, kind: str, length: int) -> Path:
        return self.path / "best" / f"{kind}-{length}.json"

    def model_dir(self, length: int) -> Path:
        """Where the fine-tune after long-`length` puts its merged model (search/finetuning.py)."""
        return self.path / "models" / f"ft-{length}"

    def finetune_dir(self, length: int) -> Path:
        """That fine-tune's checkpoint, progress.json and training.json."""
        return self.path / "finetune" / f"ft-{length}"

    def write_best(self, record: BestRecord) -> None:
        atomic_write_text(self.best_path(record.kind, record.target_length), record.to_json())

    def _best_paths(self, kind: str) -> dict[int, Path]:
        found = {}
        for p in (self.path / "best").glob(f"{kind}-*.json"):
            length = p.stem.split("-", 1)[1]
            if length.isdigit():
                found[int(length)] = p
        return dict(sorted(found.items()))

    def bests(self, kind: str) -> dict[int, BestRecord]:
        """Every best record of a kind (long | short), by target length, ascending."""
        return {n: BestRecord.load(p) for n, p in self._best_paths(kind).items()}

    def best(self, kind: str, length: int | None = None) -> BestRecord | None:
        """The best record at `length`; without one, the longest (None when the run has none).
        A length the run has no record for is a UserError naming the lengths it has."""
        found = self._best_paths(kind)
        if length is None:
            if not found:
                return None
            length = max(found)
        if length not in found:
            have = ", ".join(str(n) for n in found) or "none"
            raise UserError(f"the run has no {kind} result for length {length} (it has: {have})")
        return BestRecord.load(found[length])


def _cut_off(p: Path, empty: bool = True) -> bool:
    """`p` holds only what Run.create writes before config.toml, empty: a creation killed (kill -9,
    power loss) half way. A new search takes such a folder; nothing of a search is lost with it.
    `empty`: whether an empty folder counts; one that cannot be listed does not."""
    try:
        entries = list(p.iterdir())
    except OSError:
        return False
    if not entries:
        return empty
    for q in entries:
        if q.name in ("best", "export"):
            if not q.is_dir() or q.is_symlink() or any(q.iterdir()):
                return False
        elif q.name in (JOURNAL, EVENTS, CONFIG):  # an empty config.toml: a claim without links
            if not q.is_file() or q.is_symlink() or q.stat().st_size:
                return False
        elif not q.name.lstrip(".").startswith(f"{CONFIG}."):  # _claim's temp files
            return False
    return True


def _taken(p: Path) -> RunBusy:
    """Two drivers started at once on one new --run-dir: the one second to create it is busy, not
    wrong (exit 75, like any second driver of a run; a requeue loop's retry resumes the run)."""
    return RunBusy(f"{p} was made a run by another driver just now, while this one started; it is in "
                   f"use: `longrope resume {quote(str(p))}` (or the same search) continues it once that "
                   "driver stops, or choose a new --run-dir")


def _claim(path: Path, text: str) -> None:
    """Write a new run's config.toml whole, and only if no other driver made the run meanwhile
    (two jobs started at once on one --run-dir both pass check_new): os.link fails on an existing
    name, where os.replace would let the second config overwrite the first's."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.claim")
    atomic_write_text(tmp, text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _taken(path.parent) from None
    except OSError:  # a file system without hard links: claim the name by an exclusive create,
        try:         # then put the whole text in place (a kill in between leaves it empty)
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            raise _taken(path.parent) from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)