"""The one exception type that the command line turns into a one-line message and exit code 2."""


class UsageError(Exception):
    """Bad usage or bad input: the message names what was found and how to fix it."""
