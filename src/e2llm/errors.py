"""The one error type users see.

Every bad input (file, field, value) raises `InputError`; the CLI prints its message as a single
line and exits with code 2. Anything else escaping is a bug in e2llm, not in the input.
The offending value is shown through a bounded repr, so a hostile file cannot turn the one line
into megabytes (or make building it walk a huge structure).
"""

from __future__ import annotations

import reprlib

_VALUE = reprlib.Repr()
_VALUE.maxstring = _VALUE.maxother = _VALUE.maxlong = 160
_VALUE.maxlist = _VALUE.maxtuple = _VALUE.maxdict = _VALUE.maxset = 20
_VALUE.maxlevel = 4


class InputError(ValueError):
    """Bad user input. `str(err)` is one line: where, what, and the offending value.

    `where` names a file and field, or a bare parameter name (`interval_s`, `system`): lower
    layers never know the CLI, so the CLI maps parameter names to its flags (`renamed`)."""

    def __init__(self, where: str, message: str, value: object = ...):
        self.where, self.message, self.value = where, message, value
        text = f"{where}: {message}" if where else message
        if value is not ...:
            text += f" (got {_VALUE.repr(value)})"
        super().__init__(text.replace("\n", " "))

    def renamed(self, where: str) -> InputError:
        """The same error reported at `where` (e.g. a parameter name replaced by its CLI flag)."""
        return InputError(where, self.message, self.value)
