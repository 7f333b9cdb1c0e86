"""Tables of `lowshot incremental`: class-clustered 95 % intervals and paired differences between methods.

Clusters are the novel classes (`heads-and-protocols.md` §8): the draws of one class are averaged
first, then the interval is taken over the class means, with C − 1 degrees of freedom.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import pandas as pd

from lowshot.io.atomic import atomic_path
from lowshot.io.tables import format_mean_ci, markdown_table, write_csv
from lowshot.stats import clustered_mean_ci

METRICS = ("novel_recall", "novel_precision", "base_accuracy", "all_accuracy", "harmonic_mean", "base_as_novel")
PERCENT = {"novel_recall", "novel_precision", "base_accuracy", "all_accuracy", "harmonic_mean"}
PAIRS: Tuple[Tuple[str, str], ...] = (
    ("imprint_ft", "imprint"), ("imprint_ft_bmlmz", "imprint"), ("imprint_ft_bmlmz", "imprint_ft"),
    ("rand_ft", "imprint_ft"), ("full_ft_bmlmz", "imprint"), ("full_ft_bmlmz", "imprint_ft_bmlmz"),
    ("imprint", "cosine_ncm"), ("imprint", "raw_imprint"))


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, n, metric): mean, class-clustered 95 % half-width, classes and runs behind it."""
    rows = []
    for (method, n), g in df.groupby(["method", "n"], sort=True):
        for m in METRICS:
            mean, ci, classes = clustered_mean_ci(g[m].to_numpy(float), g["novel_class"].to_numpy())
            rows.append({"method": method, "n": n, "metric": m, "mean": mean, "ci95": ci, "classes": classes,
                         "runs": int(g[m].notna().sum())})
    return pd.DataFrame(rows)


def paired(df: pd.DataFrame, pairs: Sequence[Tuple[str, str]] = PAIRS) -> pd.DataFrame:
    """Per pair (A, B) present and n: mean of A − B over the shared (class, draw) runs, class-clustered interval."""
    rows = []
    have = set(df["method"])
    for a, b in (p for p in pairs if set(p) <= have):
        merged = df[df.method == a].merge(df[df.method == b], on=["n", "novel_class", "draw"], suffixes=("_a", "_b"))
        for n, g in merged.groupby("n", sort=True):
            for m in METRICS:
                diff = (g[m + "_a"] - g[m + "_b"]).to_numpy(float)
                mean, ci, classes = clustered_mean_ci(diff, g["novel_class"].to_numpy())
                rows.append({"a": a, "b": b, "n": n, "metric": m, "difference": mean, "ci95": ci,
                             "classes": classes, "runs": len(g), "significant": bool(abs(mean) > ci)})
    return pd.DataFrame(rows)


def _cell(metric: str, mean: float, ci: float) -> str:
    k = 100.0 if metric in PERCENT else 1.0
    return format_mean_ci(k * mean, k * ci)


def markdown(summ: pd.DataFrame, diffs: pd.DataFrame) -> str:
    """One table per metric (rows = method with its classes × runs, columns = n), then the paired differences."""
    parts = []
    for m in METRICS:
        g = summ[summ.metric == m].copy()
        g["cell"] = [_cell(m, a, c) for a, c in zip(g["mean"], g["ci95"])]
        wide = g.pivot(index="method", columns="n", values="cell")
        wide.columns = [f"n={n}" for n in wide.columns]
        size = g.groupby("method")[["classes", "runs"]].max()
        wide.insert(0, "classes / runs per n", [f"{c} / {r}" for c, r in zip(size.classes, size.runs)])
        unit = " (%)" if m in PERCENT else " (images)"
        parts.append(f"### {m}{unit}, mean ± class-clustered 95 % interval\n\n{markdown_table(wide)}")
    if len(diffs):
        d = diffs[diffs.metric.isin(["novel_recall", "base_accuracy"])].copy()
        d["row"] = d.a + " − " + d.b + " · " + d.metric
        d["cell"] = [_cell(m, a, c) + ("*" if s else "") for m, a, c, s in
                     zip(d.metric, d.difference, d.ci95, d.significant)]
        wide = d.pivot(index="row", columns="n", values="cell")
        wide.columns = [f"n={n}" for n in wide.columns]
        parts.append("### paired differences (points; * = interval excludes 0)\n\n" + markdown_table(wide))
    return "\n\n".join(parts)


def write_tables(df: pd.DataFrame, out: Path) -> str:
    """Write `summary.csv`, `paired.csv` and `tables.md` under `out`; returns the markdown."""
    summ, diffs = summary(df), paired(df)
    write_csv(summ, out / "summary.csv")
    write_csv(diffs, out / "paired.csv")
    text = markdown(summ, diffs)
    with atomic_path(out / "tables.md") as tmp:
        tmp.write_text(text + "\n")
    return text
