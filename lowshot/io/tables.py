"""Tables of results: per-cell means with 95 % intervals, paired differences, markdown and atomic CSV files.

Means are taken per recipe (`long_table`'s `recipe`: one representation, or the training seeds of one recipe)
with `lowshot.stats.seed_draw_ci`: over the experiments for one seed, over seeds × experiments for several
(experiments shared by the seeds when their shot files are the same), with the between-seed and the
between-draw standard deviations beside the interval.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from lowshot.errors import InputError
from lowshot.io.atomic import atomic_path
from lowshot.io.results import GROUP, METRICS
from lowshot.stats import SeedDrawCI, seed_draw_ci

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


def summary(df: pd.DataFrame, by: str = "recipe") -> pd.DataFrame:
    """Mean, 95 % half-width and N per (recipe, method, setup, n, metric), named `representation` in the output.

    `by="representation"` summarises each seed's run folder on its own (the intervals over its experiments).
    Columns beyond mean, ci95, runs (values behind the mean): seeds, sd_seed, sd_draw, seed_share (`SeedDrawCI`).
    """
    out = []
    for key, g in df.groupby([by, "method", "setup", "n"], sort=True):
        crossed = shared_draws(g)
        for m in METRICS:
            if m in g and g[m].notna().any():
                ci = seed_draw_ci(g[m].to_numpy(float), g["train_seed"].fillna(-1).to_numpy(), g["expid"].to_numpy(), crossed)
                out.append(dict(zip(GROUP + ["n"], key), metric=m, **interval_columns(ci, int(g[m].notna().sum()))))
    return pd.DataFrame(out)


def shared_draws(g: pd.DataFrame) -> bool:
    """Whether the seeds of a group read the same shot file for each experiment (the draws are then crossed)."""
    return "shots_digest" not in g or bool((g.groupby("expid")["shots_digest"].nunique(dropna=False) <= 1).all())


def interval_columns(ci: SeedDrawCI, runs: int) -> dict:
    """A `SeedDrawCI` as table columns."""
    return {"mean": ci.mean, "ci95": ci.ci95, "runs": runs, "seeds": ci.seeds, "sd_seed": ci.sd_seed,
            "sd_draw": ci.sd_draw, "seed_share": ci.seed_share if ci.seeds > 1 else np.nan}


def hg_tables(summ: pd.DataFrame) -> str:
    """Markdown: per method, rows n, columns the six H&G accuracies (mean ± 95 % interval, in %)."""
    parts = []
    for key, g in summ[summ["metric"].isin(HG_COLUMNS)].groupby(GROUP, sort=True):
        rep, method, setup = key
        runs, seeds = int(g["runs"].min()), int(g["seeds"].max()) if "seeds" in g else 1
        what = f"{seeds} training seeds × {runs // seeds}" if seeds > 1 else str(runs)
        wide = g.assign(cell=[format_mean_ci(m, c) for m, c in zip(g["mean"], g["ci95"])]).pivot(index="n", columns="metric", values="cell")
        wide = wide[list(HG_COLUMNS)].rename(columns=HG_COLUMNS)
        parts.append(f"### {rep} / {method} (setup {setup}, {what} experiments per row)\n\n{markdown_table(wide)}")
    return "\n\n".join(parts)


def comparison_tables(summ: pd.DataFrame, metrics: Sequence[str] = ("top1_novel", "top5_novel", "top1_base",
                                                                    "top1_all", "novel_precision")) -> str:
    """Markdown: one table per metric, rows = representation/method (and setup, when there are several), columns = n."""
    parts = []
    for m in metrics:
        g = summ[summ["metric"] == m]
        if g.empty:
            continue
        setup = [f" (setup {s})" for s in g["setup"]] if g["setup"].nunique() > 1 else ""
        g = g.assign(row=g["representation"] + " / " + g["method"] + setup,
                     cell=[format_mean_ci(a, c) for a, c in zip(g["mean"], g["ci95"])])
        wide = g.pivot(index="row", columns="n", values="cell")
        wide.columns = [f"n={n}" for n in wide.columns]
        parts.append(f"### {m}\n\n{markdown_table(wide)}")
    return "\n\n".join(parts)


def paired_difference(df: pd.DataFrame, a: str, b: str, by: str = "method",
                      metrics: Sequence[str] = ("top1_novel", "top5_novel", "top1_base", "top1_all")) -> pd.DataFrame:
    """Per n, the mean of (A − B) over the shared draws, paired within training seed and draw.

    A and B are methods (`by="method"`: same run folder, setup and experiment), representations
    (`by="representation"`: same method, setup and experiment) or recipes (`by="recipe"`: same method,
    setup, experiment and training seed). The differences are averaged per recipe with `seed_draw_ci`
    (over the experiments for one seed, over seeds × experiments for several).
    """
    other = {"method": "representation", "representation": "method", "recipe": "method"}[by]
    for name in (a, b):
        if name not in set(df[by]):
            raise InputError(None, f"--compare: no results for {by} {name!r}; have {sorted(set(df[by]))}")
    df = df.assign(train_seed=df["train_seed"].fillna(-1))
    keys = [other, "setup", "n", "expid"] + (["train_seed"] if by == "recipe" else [])
    merged = df[df[by] == a].merge(df[df[by] == b], on=keys, suffixes=("_a", "_b"))
    merged = merged.assign(group=merged["recipe_a"] if by == "method" else merged[other],
                           train_seed=merged["train_seed"] if by == "recipe" else merged["train_seed_a"])
    rows = []
    for (rest, setup, n), g in merged.groupby(["group", "setup", "n"]):
        crossed = bool((g.groupby("expid")["shots_digest_a"].nunique(dropna=False) <= 1).all()) if "shots_digest_a" in g else True
        for m in metrics:
            ci = seed_draw_ci((g[m + "_a"] - g[m + "_b"]).to_numpy(float), g["train_seed"].to_numpy(),
                              g["expid"].to_numpy(), crossed)
            rows.append({other: rest, "setup": setup, "n": n, "metric": m, "difference": ci.mean, "ci95": ci.ci95,
                         "runs": len(g), "seeds": ci.seeds, "sd_seed": ci.sd_seed,
                         "significant": bool(abs(ci.mean) > ci.ci95) if len(g) > 1 else False})
    return pd.DataFrame(rows)
