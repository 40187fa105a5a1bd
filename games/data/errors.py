"""Errors about the user's input (files, names, settings).

The CLI prints any ``InputError`` as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class InputError(Exception):
    """Bad user input: a missing or corrupt file, an unknown name, a wrong shape or setting."""


class RecordingError(InputError):
    """A recording that is missing, corrupt, or does not fit the settings it is used with."""
