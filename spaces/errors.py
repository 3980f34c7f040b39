"""The one exception type for user mistakes.

Every package raises `UserError` (or a subclass) for input a user can fix: the
CLI prints its message as one line ``error: ...`` and exits with code 2. Any
other exception is a bug and keeps its traceback.
"""

from pathlib import Path


class UserError(ValueError):
    """Bad input that the user can fix; the message says what and how."""


def reraise_interrupt(e: BaseException) -> None:
    """Raise KeyboardInterrupt if `e` came of one. A Ctrl-C (or the driver's SIGTERM, raised as
    one) that lands inside a C extension's import comes out as that import's error, pybind11's
    ImportError "initialization failed" raised from it: a handler that turns a failed model or
    dataset load into one line would call the model broken and exit 2 instead of 130."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        seen.add(id(e))
        e = e.__cause__ or e.__context__


def read_text(path: Path, what: str) -> str:
    """A text file's contents, or one line saying why not (missing, unreadable, not UTF-8).
    Every user-supplied file (configs, factors, a run's frozen config) is read through this."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None


def need_file(path: str | Path, what: str) -> Path:
    """`path` as a file to read, or one line: missing, or a folder. A pipe (a shell's <(...)) is
    read as a file, not called missing as is_file() had it."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder, not a file")
    if not p.exists():
        raise UserError(f"{what} {p} does not exist")
    return p
