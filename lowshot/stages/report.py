"""Stage 5: tables and plots from result JSONs (H&G's tables, with 95 % intervals).

Results of run folders `<recipe>-seed<k>` are averaged over the recipe's training seeds (two-level intervals,
`lowshot.io.tables.summary`; variance components in `report_seeds`); calibration and the base ↔ novel bias
diagnostics are in `report_bias`. Folders of episode results get the paired per-episode tables of
`lowshot.protocols.episode_report`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import pandas as pd

from lowshot.errors import InputError
from lowshot.io.atomic import atomic_path
from lowshot.io.results import (
    GROUP,
    METRICS,
    RESULT_KEYS,
    check_same_inputs,
    long_table,
    missing_cells,
    read_results,
)
from lowshot.io.tables import (
    comparison_tables,
    format_mean_ci,
    hg_tables,
    markdown_table,
    paired_difference,
    summary,
    write_csv,
)
from lowshot.stages.report_bias import MARKERS, add_setup1_choices, bias_report
from lowshot.stages.report_classes import per_class_report
from lowshot.stages.report_seeds import seed_folders, seeds_report


@dataclass
class ReportConfig:
    results: List[str] = field(default_factory=lambda: ["runs/demo/results"])
    out_dir: Optional[str] = None  # default: the first results folder's parent / "report"
    compare: Optional[List[str]] = None  # two method (or recipe, or representation) names: paired differences
    plot: bool = True
    seeds: Optional[List[int]] = None  # each <run>/results stands for <run>-seed<k>/results, k in seeds


def _check_unique(df: pd.DataFrame) -> None:
    dup = df[df.duplicated(GROUP + ["n", "expid"], keep=False)]
    if len(dup):
        d = dup.iloc[0]
        raise InputError(None, f"two results for {d['method']} n={d['n']} exp={d['expid']} with different options "
                               f"({', '.join(sorted(set(dup['head_params'])))}); report their folders separately")


def plot(summ: pd.DataFrame, path: Path) -> None:
    """Accuracy against n, one line per method with its shaded 95 % interval, one panel per metric."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["top1_novel", "top5_novel", "top1_base", "top1_all"]
    lines = sorted(set(zip(summ["representation"], summ["method"])))
    colours = {key: plt.cm.tab20(i % 20) for i, key in enumerate(lines)}  # 20 distinct colours, not 10
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharex=True)
    for ax, m in zip(axes, panels):
        for (rep, method), g in summ[summ["metric"] == m].groupby(["representation", "method"]):
            g = g.sort_values("n")
            colour = colours[(rep, method)]
            ax.plot(g["n"], g["mean"], marker=MARKERS[lines.index((rep, method)) % len(MARKERS)], ms=4, color=colour,
                    label=f"{rep} / {method}")
            ax.fill_between(g["n"], g["mean"] - g["ci95"].fillna(0), g["mean"] + g["ci95"].fillna(0),
                            color=colour, alpha=0.2)
        ax.set(xscale="log", xticks=[1, 2, 5, 10, 20], xticklabels=["1", "2", "5", "10", "20"],
               xlabel="shots per novel class (n)", ylabel=f"{m} (%)", title=m)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def report(cfg: ReportConfig) -> str:
    """Write CSVs (+ plots) under `out_dir` and return the markdown tables (of episodes folders: the paired
    per-episode tables of `lowshot.protocols.episode_report`)."""
    from lowshot.protocols.episode_report import PER_EPISODE, report_episodes
    if any((Path(d) / PER_EPISODE).is_dir() for d in cfg.results):
        return report_episodes(cfg.results, cfg.out_dir)
    folders = seed_folders(cfg.results, cfg.seeds) if cfg.seeds else list(cfg.results)
    results = [r for d in folders for r in _read_dir(d)]
    check_same_inputs(results)
    df = long_table(results)
    _check_unique(df)
    df = add_setup1_choices(df, results)
    summ = summary(df)
    out = Path(cfg.out_dir or _default_out(cfg))
    write_csv(df, out / "results_long.csv")
    write_csv(summ, out / "summary.csv")
    _metric_tables(summ, out)
    text = [hg_tables(summ)]
    if df["method"].nunique() > 1 or df["recipe"].nunique() > 1:
        text.append("## Comparison across methods (mean ± 95 % interval over experiments and training seeds, %)\n\n"
                    + comparison_tables(summ))
    if cfg.compare:
        text.append(_compare(df, cfg.compare, out))
    text += seeds_report(df, summ, folders, out)
    text += _notes(df, results)
    if cfg.plot:
        plot(summ, out / "accuracy_vs_n.png")
    text += bias_report(results, df, summ, out, cfg.plot)
    names = {rep: (recipe, seed) for rep, recipe, seed in zip(df["representation"], df["recipe"], df["train_seed"])}
    text += per_class_report(results, out, cfg.plot, names)
    with atomic_path(out / "report.md") as tmp:  # stdout less its last line (a local path)
        tmp.write_text("\n\n".join(text) + "\n")
    text.append(f"CSV tables and plots written to {out}/")
    return "\n\n".join(text)


def _default_out(cfg: ReportConfig) -> Path:
    """`<first results folder>/../report`; with `--seeds`, `<run>-report` beside the seeds' run folders."""
    first = Path(cfg.results[0]).parent
    return Path(f"{first}-report") if cfg.seeds else first / "report"


def _metric_tables(summ: pd.DataFrame, out: Path) -> None:
    for m in METRICS:
        g = summ[summ["metric"] == m]
        if len(g):
            write_csv(g.pivot_table(index=["representation", "method", "setup"], columns="n", values=["mean", "ci95"]).reset_index()
                       .pipe(_flatten), out / f"table_{m}.csv")


def _compare(df: pd.DataFrame, names: List[str], out: Path) -> str:
    """Paired differences A − B: of methods, else of recipes (seeds paired), else of representations."""
    by = next((b for b in ("method", "recipe", "representation") if set(names) <= set(df[b])), "method")
    diff = paired_difference(df, *names, by=by)
    write_csv(diff, out / "compare.csv")
    other = {"method": "representation", "recipe": "method", "representation": "method"}[by]
    parts = []
    for (rest, setup), g in diff.groupby([other, "setup"]):
        seeds = int(g["seeds"].max())
        wide = g.assign(cell=[format_mean_ci(a, c) for a, c in zip(g["difference"], g["ci95"])]).pivot(
            index="n", columns="metric", values="cell")
        parts.append(f"*{rest}*, setup {setup} ({seeds} training seed{'s' if seeds > 1 else ''})\n\n"
                     f"{markdown_table(wide)}")
    return f"## Paired difference {names[0]} − {names[1]} (points)\n\n" + "\n\n".join(parts)


def _notes(df: pd.DataFrame, results: List[dict]) -> List[str]:
    """Missing cells, and results written before a metric existed (their columns would be silently empty)."""
    text = []
    lack = missing_cells(df)
    if lack:
        text.append("**Missing cells** (means above use only the experiments present):\n" + "\n".join(f"- {x}" for x in lack))
    old = {k: [r for r in results if k not in r] for k in RESULT_KEYS}
    old = {k: rs for k, rs in old.items() if rs}
    if old:
        folders = sorted({str(Path(r["_path"]).parent) for rs in old.values() for r in rs})
        text.append(f"**Results without some metrics** ({', '.join(sorted(old))}): {max(map(len, old.values()))} "
                    f"results written before these metrics existed, in {', '.join(folders)}; their cells are left out "
                    "of those metrics' means. Run `lowshot benchmark` again on their run folders: it recomputes them.")
    return text


def _flatten(df: pd.DataFrame) -> pd.DataFrame:
    """Columns ("mean", n) -> "n<n>", ("ci95", n) -> "ci95_n<n>", (key, "") -> key."""
    names = {"mean": "n{}", "ci95": "ci95_n{}"}
    df.columns = [names[a].format(b) if b != "" else a for a, b in df.columns]
    return df


def _read_dir(d: str) -> List[dict]:
    if not Path(d).is_dir():
        raise InputError(d, "results folder not found (run `lowshot benchmark` first)")
    return read_results(d)
