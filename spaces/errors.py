"""The one exception type for user mistakes.

Every package raises `UserError` (or a subclass) for input a user can fix: the
CLI prints its message as one line ``error: ...`` and exits with code 2. Any
other exception is a bug and keeps its traceback.
"""

from pathlib import Path


class UserError(ValueError):
    """Bad input that the user can fix; the message says what and how."""


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
