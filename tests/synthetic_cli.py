"""Running the CLI in-process and reading its one-line errors (shared by the CLI tests)."""
from click.testing import CliRunner

from lowshot.cli import main


def invoke(*args):
    """Run `lowshot ARGS...` in-process; exceptions other than usage errors propagate."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:
    """The single `Error: ...` line of a failed command (asserts there is exactly one line)."""
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]
