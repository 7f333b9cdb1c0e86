"""Tables of results: per-cell means with 95 % intervals, paired differences, markdown and atomic CSV files."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from lowshot.errors import InputError
from lowshot.io.atomic import atomic_path
from lowshot.io.results import GROUP, METRICS
from lowshot.stats import mean_ci

HG_COLUMNS = {"top1_novel": "Novel top-1", "top5_novel": "Novel top-5", "top1_base": "Base top-1",
              "top5_base": "Base top-5", "top1_all": "All top-1", "top5_all": "All top-5"}


def format_mean_ci(mean: float, ci: float) -> str:
    """"mean ± ci" with two decimals (the mean alone when the interval is undefined)."""
    return f"{mean:.2f}" if np.isnan(ci) else f"{mean:.2f} ± {ci:.2f}"


def markdown_table(df: pd.DataFrame) -> str:
    """A markdown table of `df`, its index as the first column."""
    header = "| " + " | ".join([str(df.index.name or "")] + [str(c) for c in df.columns]) + " |"
    rule = "|" + "---|" * (len(df.columns) + 1)
    body = ["| " + " | ".join([str(i)] + [str(v) for v in row]) + " |" for i, row in zip(df.index, df.to_numpy())]
    return "\n".join([header, rule] + body)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """`df` as CSV at `path`, written atomically (4 decimals)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, 95 % half-width and N over experiments, per (representation, method, setup, n, metric)."""
    out = []
    for key, g in df.groupby(GROUP + ["n"], sort=True):
        for m in METRICS:
            if m in g:
                mean, ci, n = mean_ci(g[m].to_numpy(float))
                out.append(dict(zip(GROUP + ["n"], key), metric=m, mean=mean, ci95=ci, runs=n))
    return pd.DataFrame(out)


def hg_tables(summ: pd.DataFrame) -> str:
    """Markdown: per method, rows n, columns the six H&G accuracies (mean ± 95 % interval, in %)."""
    parts = []
    for key, g in summ[summ["metric"].isin(HG_COLUMNS)].groupby(GROUP, sort=True):
        rep, method, setup = key
        runs = int(g["runs"].min())
        wide = g.assign(cell=[format_mean_ci(m, c) for m, c in zip(g["mean"], g["ci95"])]).pivot(index="n", columns="metric", values="cell")
        wide = wide[list(HG_COLUMNS)].rename(columns=HG_COLUMNS)
        parts.append(f"### {rep} / {method} (setup {setup}, {runs} experiments per row)\n\n{markdown_table(wide)}")
    return "\n\n".join(parts)


def comparison_tables(summ: pd.DataFrame, metrics: Sequence[str] = ("top1_novel", "top5_novel", "top1_base",
                                                                    "top1_all", "novel_precision")) -> str:
    """Markdown: one table per metric, rows = representation/method, columns = n."""
    parts = []
    for m in metrics:
        g = summ[summ["metric"] == m]
        if g.empty:
            continue
        g = g.assign(row=g["representation"] + " / " + g["method"],
                     cell=[format_mean_ci(a, c) for a, c in zip(g["mean"], g["ci95"])])
        wide = g.pivot(index="row", columns="n", values="cell")
        wide.columns = [f"n={n}" for n in wide.columns]
        parts.append(f"### {m}\n\n{markdown_table(wide)}")
    return "\n\n".join(parts)


def paired_difference(df: pd.DataFrame, a: str, b: str, by: str = "method",
                      metrics: Sequence[str] = ("top1_novel", "top5_novel", "top1_base", "top1_all")) -> pd.DataFrame:
    """Per n, the mean of (A − B) over the shared draws (same setup and experiment, and the same
    representation when A and B are methods (`by="method"`), the same method when they are
    representations (`by="representation"`))."""
    other = {"method": "representation", "representation": "method"}[by]
    for name in (a, b):
        if name not in set(df[by]):
            raise InputError(None, f"--compare: no results for {by} {name!r}; have {sorted(set(df[by]))}")
    keys = [other, "setup", "n", "expid"]
    merged = df[df[by] == a].merge(df[df[by] == b], on=keys, suffixes=("_a", "_b"))
    rows = []
    for (rest, setup, n), g in merged.groupby([other, "setup", "n"]):
        for m in metrics:
            mean, ci, runs = mean_ci((g[m + "_a"] - g[m + "_b"]).to_numpy(float))
            rows.append({other: rest, "setup": setup, "n": n, "metric": m, "difference": mean,
                         "ci95": ci, "runs": runs, "significant": bool(abs(mean) > ci) if runs > 1 else False})
    return pd.DataFrame(rows)
