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
