"""The one exception type for bad input: the CLI prints its message as a single line."""
from __future__ import annotations

import re


class InputError(ValueError):
    """Bad user input (a file, an option): the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path, self.problem = (str(path) if path is not None else None), problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)

    def __reduce__(self):  # crosses process boundaries (a forked benchmark cell) intact
        return type(self), (self.path, self.problem)


def os_problem(error: OSError) -> str:
    """The file system's reason for an `OSError`, in a few words ("Read-only file system", "No space left on
    device"), also from HDF5's long messages, which carry it as `error message = '...'`."""
    if error.strerror:
        return error.strerror
    found = re.search(r"error message = '([^']+)'", str(error))
    return found.group(1) if found else str(error).splitlines()[0] if str(error) else type(error).__name__


def os_error(error: OSError, path=None) -> InputError:
    """An `OSError` as a one-line `InputError` naming the file (`path`, else the error's own file name)."""
    return InputError(path or error.filename or "?", os_problem(error))
