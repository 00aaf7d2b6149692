"""Errors that the command line reports as one line with exit code 2."""


class UsageError(ValueError):
    """Bad input from the user: the message names the problem and the fix.

    The CLI prints it as ``prunescope: error: <message>`` and exits with code 2, no traceback.
    """
