"""Which paired conclusions survive when the training seeds are counted (docs/experiments/seeds.md).

    python benchmarks/seed_conclusions.py RESULTS... --pair A B [--pair A B ...] [--by method|recipe]
        [--metrics top1_novel,top1_base,top1_all] [--out runs/seed-conclusions.csv]

RESULTS are results folders of run folders `<recipe>-seed<k>`. For each pair A − B (methods, or recipes
trained with the same seeds), metric and n: the paired difference of each seed alone (mean ± 95 %
interval over its experiments, what a one-seed report says) and over all seeds (the two-level interval
of `lowshot.stats.seed_draw_ci`, paired within seed and experiment), and whether each interval excludes 0.
Prints a markdown table and writes the rows as CSV.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

import pandas as pd

from lowshot.io.results import check_same_inputs, long_table, read_results
from lowshot.io.tables import format_mean_ci, markdown_table, paired_difference, write_csv


def verdict(mean: float, ci: float) -> str:
    return "≠ 0" if abs(mean) > ci else "n.s."


def pair_rows(df: pd.DataFrame, a: str, b: str, by: str, metrics: List[str]) -> List[dict]:
    """One row per (metric, n): each seed's paired difference and the all-seeds one."""
    pooled = paired_difference(df, a, b, by=by, metrics=metrics)
    other = "method" if by == "recipe" else "representation"  # what A and B share: the method, or the recipe
    for seed in sorted(df["train_seed"].dropna().unique()):
        one = paired_difference(df[df["train_seed"] == seed], a, b, by=by, metrics=metrics)
        pooled = pooled.merge(one[[other, "setup", "n", "metric", "difference", "ci95"]].rename(
            columns={"difference": f"seed{int(seed)}", "ci95": f"seed{int(seed)}_ci95"}), on=[other, "setup", "n", "metric"])
    return [{"pair": f"{a} − {b}" + (f", {r[other]}" if by == "recipe" else ""), **r} for r in pooled.to_dict("records")]


def table(rows: pd.DataFrame) -> str:
    seeds = sorted(c for c in rows.columns if c.startswith("seed") and not c.endswith("_ci95") and c != "seeds")
    out = rows[["pair", "metric", "n"]].copy()
    for s in seeds:
        out[f"{s} alone"] = [f"{format_mean_ci(m, c)} {verdict(m, c)}" for m, c in zip(rows[s], rows[s + "_ci95"])]
    out["all seeds"] = [f"{format_mean_ci(m, c)} {verdict(m, c)}" for m, c in zip(rows["difference"], rows["ci95"])]
    out["σ_seed"] = [f"{x:.2f}" for x in rows["sd_seed"]]
    return markdown_table(out.set_index("pair"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+")
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("A", "B"))
    p.add_argument("--by", default="method", choices=["method", "recipe"])
    p.add_argument("--metrics", default="top1_novel,top1_base,top1_all")
    p.add_argument("--setup", type=int, default=2)
    p.add_argument("--out", default="runs/seed-conclusions.csv")
    args = p.parse_args()
    results = [r for d in args.results for r in read_results(d)]
    check_same_inputs(results)
    df = long_table(results)
    df = df[df["setup"] == args.setup]
    rows = pd.DataFrame([r for a, b in args.pair for r in pair_rows(df, a, b, args.by, args.metrics.split(","))])
    write_csv(rows, Path(args.out))
    print(table(rows))


if __name__ == "__main__":
    main()
