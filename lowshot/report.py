"""Stage 5: tables and plots from result JSONs (the H&G README tables, with 95 % intervals)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from lowshot.errors import InputError
from lowshot.io.atomic import atomic_path
from lowshot.io.results import ACC_NAMES, read_results
from lowshot.stats import mean_ci

METRICS = ACC_NAMES + ("novel_precision", "harmonic_mean_top1", "wang_novel_top5", "wang_all_top5",
                       "wang_all_prior_top5")
HG_COLUMNS = {"top1_novel": "Novel top-1", "top5_novel": "Novel top-5", "top1_base": "Base top-1",
              "top5_base": "Base top-5", "top1_all": "All top-1", "top5_all": "All top-5"}
GROUP = ["representation", "method", "setup"]


@dataclass
class ReportConfig:
    results: List[str] = field(default_factory=lambda: ["runs/demo/results"])
    out_dir: Optional[str] = None  # default: the first results folder's parent / "report"
    compare: Optional[List[str]] = None  # two method names: paired differences
    plot: bool = True


def method_name(r: dict) -> str:
    """Head name, non-default options aside, plus the generator: e.g. `logreg+analogies(M=20)`."""
    name = r["head"]
    if r.get("generator"):
        name += f"+{r['generator']['name']}(M={r['generator']['max_per_label']})"
    return name


def long_table(results: Sequence[dict]) -> pd.DataFrame:
    """One row per cell, metrics in percent."""
    rows = []
    for r in results:
        row = {"representation": r["representation"], "method": method_name(r), "setup": r["setup"],
               "n": r["n"], "expid": r["expid"], "head": r["head"], "head_params": json.dumps(r["head_params"], sort_keys=True),
               "seed": r["seed"], "wall_time_s": r.get("wall_time_s")}
        row.update({k: 100 * v for k, v in zip(ACC_NAMES, r["accs"])})
        row.update({k: 100 * r[k] for k in METRICS[6:] if k in r})
        rows.append(row)
    if not rows:
        raise InputError(None, "no result files found")
    return pd.DataFrame(rows).sort_values(GROUP + ["n", "expid"], kind="stable").reset_index(drop=True)


def _check_unique(df: pd.DataFrame) -> None:
    dup = df[df.duplicated(GROUP + ["n", "expid"], keep=False)]
    if len(dup):
        d = dup.iloc[0]
        raise InputError(None, f"two results for {d['method']} n={d['n']} exp={d['expid']} with different options "
                               f"({', '.join(sorted(set(dup['head_params'])))}); report their folders separately")


def check_same_inputs(results: Sequence[dict]) -> None:
    """Refuse to average or pair results of one representation that were computed from different files.

    All results of a representation must share its feature files and label splits, and all results
    of one experiment its shot file; otherwise one error names the fingerprints, the files and an
    example result of each side.
    """
    groups: Dict[tuple, Dict[str, List[dict]]] = {}
    for r in results:
        inputs = r.get("inputs") or {}
        for what in ("train_features", "test_features", "splits", "shots"):
            key = (r["representation"], what) + ((r["expid"],) if what == "shots" else ())
            groups.setdefault(key, {}).setdefault(inputs.get(what, "unrecorded"), []).append(r)
    for (rep, what, *exp), sides in groups.items():
        if len(sides) > 1:
            where = " and ".join(_describe_side(digest, rs, what) for digest, rs in sides.items())
            raise InputError(None, f"results of representation {rep!r}{' exp ' + str(exp[0]) if exp else ''} come "
                                   f"from different {what.replace('_', ' ')}: {where}; re-run `lowshot benchmark` "
                                   "so every cell reads the same files, or move the stale results away")


def _describe_side(digest: str, results: List[dict], what: str) -> str:
    files = sorted({(r.get("input_files") or {}).get(what, "?") for r in results})
    return f"{digest} ({', '.join(files)}; {len(results)} results, e.g. {Path(results[0]['_path']).name})"


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, 95 % half-width and N over experiments, per (representation, method, setup, n, metric)."""
    out = []
    for key, g in df.groupby(GROUP + ["n"], sort=True):
        for m in METRICS:
            if m in g:
                mean, ci, n = mean_ci(g[m].to_numpy(float))
                out.append(dict(zip(GROUP + ["n"], key), metric=m, mean=mean, ci95=ci, runs=n))
    return pd.DataFrame(out)


def missing_cells(df: pd.DataFrame) -> List[str]:
    """Cells of the grid (every n × every experiment seen) that a method lacks."""
    ns, exps = sorted(df["n"].unique()), sorted(df["expid"].unique())
    out = []
    for key, g in df.groupby(GROUP):
        have = set(zip(g["n"], g["expid"]))
        lack = [f"n={n} exp={e}" for n in ns for e in exps if (n, e) not in have]
        if lack:
            out.append(f"{' / '.join(map(str, key))}: missing {', '.join(lack)}")
    return out


def format_mean_ci(mean: float, ci: float) -> str:
    """"mean ± ci" with two decimals (the mean alone when the interval is undefined)."""
    return f"{mean:.2f}" if np.isnan(ci) else f"{mean:.2f} ± {ci:.2f}"


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
            ax.plot(g["n"], g["mean"], marker="o", ms=3, color=colour, label=f"{rep} / {method}")
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
    """Write CSVs (+ plot) under `out_dir` and return the markdown tables."""
    results = [r for d in cfg.results for r in _read_dir(d)]
    check_same_inputs(results)
    df = long_table(results)
    _check_unique(df)
    summ = summary(df)
    out = Path(cfg.out_dir or Path(cfg.results[0]).parent / "report")
    write_csv(df, out / "results_long.csv")
    write_csv(summ, out / "summary.csv")
    for m in METRICS:
        g = summ[summ["metric"] == m]
        if len(g):
            write_csv(g.pivot_table(index=["representation", "method", "setup"], columns="n", values=["mean", "ci95"]).reset_index()
                       .pipe(_flatten), out / f"table_{m}.csv")
    text = [hg_tables(summ)]
    if df["method"].nunique() > 1 or df["representation"].nunique() > 1:
        text.append("## Comparison across methods (mean ± 95 % interval over experiments, %)\n\n" + comparison_tables(summ))
    if cfg.compare:
        diff = paired_difference(df, *cfg.compare)
        write_csv(diff, out / "compare.csv")
        text.append(f"## Paired difference {cfg.compare[0]} − {cfg.compare[1]} (points)\n\n" + markdown_table(
            diff.assign(cell=[format_mean_ci(a, c) for a, c in zip(diff["difference"], diff["ci95"])])
            .pivot(index="n", columns="metric", values="cell")))
    lack = missing_cells(df)
    if lack:
        text.append("**Missing cells** (means above use only the experiments present):\n" + "\n".join(f"- {x}" for x in lack))
    if cfg.plot:
        plot(summ, out / "accuracy_vs_n.png")
    from lowshot.report_classes import per_class_report  # here: that module imports this one
    text += per_class_report(results, out, cfg.plot)
    with atomic_path(out / "report.md") as tmp:  # stdout less its last line (a local path)
        tmp.write_text("\n\n".join(text) + "\n")
    text.append(f"CSV tables and plot written to {out}/")
    return "\n\n".join(text)


def _flatten(df: pd.DataFrame) -> pd.DataFrame:
    """Columns ("mean", n) -> "n<n>", ("ci95", n) -> "ci95_n<n>", (key, "") -> key."""
    names = {"mean": "n{}", "ci95": "ci95_n{}"}
    df.columns = [names[a].format(b) if b != "" else a for a, b in df.columns]
    return df


def _read_dir(d: str) -> List[dict]:
    if not Path(d).is_dir():
        raise InputError(d, "results folder not found (run `lowshot benchmark` first)")
    return read_results(d)
