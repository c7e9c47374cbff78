"""One exception type for every problem a user can fix. The CLI prints its message as a
single line and exits non-zero; anything else is a bug and keeps its traceback."""


class MedtuneError(Exception):
    """A problem with the user's input (paths, config values, data, models)."""
