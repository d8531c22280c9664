"""Exceptions dyve raises for problems a user can fix (bad files, bad names, bad options).

The CLI prints these as one line without a traceback; anything else is a bug and keeps
its traceback.
"""


class DyveError(Exception):
    """Base class of errors caused by user input or files, not by dyve itself."""


class DataError(DyveError):
    """A data file is missing, truncated, corrupt, or fails its checksum."""


class ChecksumError(DataError):
    """A file's checksum differs from the expected one; dyve refuses to load it."""


class UnknownNameError(DyveError, KeyError):
    """A name (model, dataset, mechanism, knob) that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
