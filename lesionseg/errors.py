"""The one exception type for user errors (bad config, bad data, bad paths).

`cli.py` prints these without a traceback and exits with status 1; anything else is a bug and keeps its
traceback. The message must name the file or config key at fault and, where there is one, the fix.
"""


class LesionsegError(Exception):
    """A problem with the user's input, explained in the message."""
