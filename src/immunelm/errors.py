"""User-facing errors.

Every problem a user can fix (a bad file, a missing column, an unknown option) is raised as
:class:`ImmuneLMError` with a single line that names the file/field and what was expected.
The CLI prints that line and exits non-zero; it never prints a traceback for these.
"""


class ImmuneLMError(Exception):
    """A problem with the user's input or environment, described in one line."""

    def __init__(self, message: str) -> None:
        # Keep it to one line: callers may pass multi-line text from other libraries.
        super().__init__(" ".join(str(message).split()))


class NonFiniteError(ImmuneLMError):
    """Training produced a nan/inf loss or gradient. The engine stops without applying the
    step; an attacker search records such a trial as a diverged attack (it gained nothing)."""
