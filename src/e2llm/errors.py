"""The one error type users see.

Every bad input (file, field, value) raises `InputError`; the CLI prints its message as a single
line and exits with code 2. Anything else escaping is a bug in e2llm, not in the input.
"""


class InputError(ValueError):
    """Bad user input. `str(err)` is one line: where, what, and the offending value."""

    def __init__(self, where: str, message: str, value: object = ...):
        text = f"{where}: {message}" if where else message
        if value is not ...:
            text += f" (got {value!r})"
        super().__init__(text.replace("\n", " "))
