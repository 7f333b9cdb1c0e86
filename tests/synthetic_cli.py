"""Running the CLI in-process and reading its one-line errors (shared by the CLI tests)."""
from click.testing import CliRunner

from lowshot.cli import main


def invoke(*args):
    """Run `lowshot ARGS...` in-process; exceptions other than usage errors propagate."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


NOTES = ("lowshot: ", "warning: ", "built ")  # a command's notes on stderr: its CPU threads, warnings, meta files


def error_line(result) -> str:
    """The single `Error: ...` line of a failed command, exit status 1 (asserts there is exactly one line besides
    the command's notes)."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith(NOTES)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]
