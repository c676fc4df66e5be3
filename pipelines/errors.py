"""Errors that mean 'the input is wrong', shown to the user as one line without a traceback."""


class LumenError(Exception):
    """A user-facing error: bad input file, bad option, missing folder."""


class InputError(LumenError):
    """An input file that cannot be used at all (missing, not JSON, wrong structure)."""
