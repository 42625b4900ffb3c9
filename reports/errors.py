"""The one error type of ``reports``: a problem with the caller's input (a missing file, a file
that is not a profile, an unknown schema, runs that cannot be compared).

``reports`` imports neither torch nor zoo, so it cannot raise ``zoo.errors.ZooValueError``; the CLI
catches :class:`ReportError` alongside ``ZooError`` and prints one line with exit code 2.
"""


class ReportError(ValueError):
    """A user error in report input; the message names the file or run and what was wrong."""
