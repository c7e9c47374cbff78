"""One exception type for every problem a user can fix. The CLI prints its message as a
single line and exits non-zero; anything else is a bug and keeps its traceback."""


class MedtuneError(Exception):
    """A problem with the user's input (paths, config values, data, models)."""


def first_line(e: BaseException) -> str:
    """An exception's first line of text, for a one-line message (its type when it has none)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
