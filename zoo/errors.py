"""User-facing errors. The CLI turns these into one line and exit code 2; anything else is a bug.

They subclass the built-in ``ValueError`` / ``TypeError`` so library users catch them as usual.
"""


class ZooError(Exception):
    """Marker base: an error caused by the caller's input, with a message naming the argument."""


class ZooValueError(ZooError, ValueError):
    pass


class ZooTypeError(ZooError, TypeError):
    pass
