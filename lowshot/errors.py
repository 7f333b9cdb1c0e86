"""The one exception type for bad input: the CLI prints its message as a single line."""


class InputError(ValueError):
    """Bad user input (a file, an option): the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path, self.problem = (str(path) if path is not None else None), problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)
