"""The README stays a front door, and the docs site builds with --strict (no broken link or anchor, every
page in the nav, the generated report tables included)."""
import html
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250
HAVE_MKDOCS = all(importlib.util.find_spec(m) is not None for m in ("mkdocs", "material", "pymdownx"))


def test_readme_is_short_and_names_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, "README.md is the front door: move the rest into docs/"
    assert "make demo" in text and "make test" in text


@pytest.mark.skipif(not HAVE_MKDOCS, reason="mkdocs-material is not installed (pip install -e '.[docs]')")
def test_docs_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    report = (ROOT / "docs/results/demo/report.md").read_text()
    first_heading = next(line[4:] for line in report.splitlines() if line.startswith("### "))
    assert html.escape(first_heading, quote=False) in (site / "results/index.html").read_text()


def test_readme_demo_numbers_are_the_generated_episode_tables():
    """The README's table is typed from docs/results/episodes/standard/episodes_report.md (what `lowshot
    report` wrote): each of its cells must be that file's, so the two cannot drift apart."""
    generated = {}  # (head, setting) -> (kind, top-1, s per 1,000 episodes); settings in the file's order
    setting = -1
    for line in (ROOT / "docs/results/episodes/standard/episodes_report.md").read_text().splitlines():
        setting += line.startswith("**")
        if line.startswith("| demo |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            generated[cells[2], setting] = (cells[3], cells[4], cells[6])
    readme = (ROOT / "README.md").read_text().split("## Demo numbers", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in readme.splitlines() if line.startswith("| `")]
    assert len(rows) == len(generated) // 2
    for head, kind, one_shot, five_shot, time_1000 in rows:
        head = head.strip("`")
        assert generated[head, 0] == (kind, one_shot, time_1000) and generated[head, 1][:2] == (kind, five_shot)
