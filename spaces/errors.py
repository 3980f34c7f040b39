"""The one exception type for user mistakes.

Every package raises `UserError` (or a subclass) for input a user can fix: the
CLI prints its message as one line ``error: ...`` and exits with code 2. Any
other exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input that the user can fix; the message says what and how."""
