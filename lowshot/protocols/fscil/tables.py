"""Tables and plot of `lowshot fscil`: per-session accuracies, summaries over sessions, paired differences.

Intervals (95 %, Student t): over the trials when there is one representation; over the
representations (each the mean over its trials) when there are several training seeds, the trials
being shared by them. Paired differences subtract the baseline's value in the same trial of the
same representation first.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
import pandas as pd

from lowshot.io.atomic import atomic_path
from lowshot.io.tables import format_mean_ci, markdown_table, write_csv
from lowshot.protocols.fscil.metrics import OVERALL, PER_SESSION, over_sessions
from lowshot.stats import clustered_mean_ci

RUN = ["representation", "method", "trial"]
SHORT = {"top1_base_session": "top-1 base session", "top1_last_session": "top-1 last session",
         "top1_average_over_sessions": "top-1 average over sessions", "performance_drop": "drop (base − last)",
         "base_accuracy_last_session": "base acc. last session", "new_accuracy_last_session": "new acc. last session",
         "harmonic_mean_last_session": "harmonic mean last session"}


def interval(values: np.ndarray, reps: np.ndarray):
    """(mean, 95 % half-width, N): over the values, or over the representations' means when there are several."""
    return clustered_mean_ci(values, reps if len(set(reps)) > 1 else np.arange(len(values)))


def overall(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (representation, method, trial): the `OVERALL` summaries of its sessions."""
    rows = [{**dict(zip(RUN, key)), **over_sessions(g.sort_values("session").to_dict("records"))}
            for key, g in df.groupby(RUN, sort=False)]
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame, by: List[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Per group of `by` and metric: mean, ci95, trials and representations behind it."""
    out = []
    for key, g in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for m in metrics:
            mean, ci, n = interval(g[m].to_numpy(float), g["representation"].to_numpy())
            out.append({**dict(zip(by, key)), "metric": m, "mean": mean, "ci95": ci, "trials": int(g["trial"].nunique()),
                        "representations": int(g["representation"].nunique()), "n": n})
    return pd.DataFrame(out)


def paired(df: pd.DataFrame, baseline: str, metrics: Sequence[str], on: List[str]) -> pd.DataFrame:
    """Per method ≠ baseline (and `on` beyond the trial): mean of method − baseline over shared trials."""
    base = df[df.method == baseline]
    out = []
    for method in (m for m in df.method.unique() if m != baseline):
        merged = df[df.method == method].merge(base, on=["representation", "trial"] + on, suffixes=("", "_b"))
        for key, g in merged.groupby(on, sort=True) if on else [((), merged)]:
            key = key if isinstance(key, tuple) else (key,)
            for m in metrics:
                mean, ci, n = interval((g[m] - g[m + "_b"]).to_numpy(float), g["representation"].to_numpy())
                out.append({"method": method, "baseline": baseline, **dict(zip(on, key)), "metric": m,
                            "difference": mean, "ci95": ci, "n": n, "significant": bool(abs(mean) > ci)})
    return pd.DataFrame(out)


def _cell(mean: float, ci: float, star: bool = False) -> str:
    return ("" if np.isnan(mean) else format_mean_ci(100 * mean, 100 * ci)) + ("*" if star else "")


def session_table(summ: pd.DataFrame, metric: str, over: pd.DataFrame, extra: Sequence[str]) -> str:
    """Markdown: rows = methods, columns = sessions 1..T, then the `extra` summaries over sessions."""
    g = summ[summ.metric == metric]
    wide = g.assign(cell=[_cell(a, c) for a, c in zip(g["mean"], g["ci95"])]).pivot(
        index="method", columns="session", values="cell")
    wide = wide.reindex(list(dict.fromkeys(g.method)))
    wide.columns = [f"s{s}" for s in wide.columns]
    for m in extra:
        o = over[over.metric == m].set_index("method")
        wide[SHORT[m]] = [_cell(o.at[k, "mean"], o.at[k, "ci95"]) for k in wide.index]
    return markdown_table(wide)


def _diff(diffs: pd.DataFrame, method: str, metric: str):
    row = diffs[(diffs.method == method) & (diffs.metric == metric)]
    return None if row.empty else row.iloc[0]


def _points(d) -> str:
    return f"{100 * d.difference:+.1f} ± {100 * d.ci95:.1f} points"


def trend_checks(df: pd.DataFrame, over: pd.DataFrame, diffs: pd.DataFrame) -> List[str]:
    """One sentence per published trend these results can check, saying whether it holds here."""
    out = []
    free = _diff(diffs, "prototype_ft_free", "base_accuracy_last_session")
    if free is not None:
        holds = free.difference < 0 and free.significant
        out.append(f"Fine-tuning on the few shots without constraints forgets the base classes faster than prototypes "
                   f"(TOPIC, Tao et al. 2020, Ft-CNN): last-session base accuracy of prototype_ft_free − prototype = "
                   f"{_points(free)}: {'holds' if holds else 'does not hold'} here.")
    kept = [(m, _diff(diffs, m, "base_accuracy_last_session")) for m in ("prototype_ft", "prototype_ft_l2")]
    kept = [(m, d) for m, d in kept if d is not None]
    if kept:
        holds = all(abs(d.difference) < 0.02 for _, d in kept)
        out.append("Freezing or regularising the earlier rows stops that forgetting (the decoupling of CEC, Zhang et al. "
                   "2021): last-session base accuracy minus prototype's, " + ", ".join(f"{m} {_points(d)}" for m, d in kept)
                   + f": {'holds' if holds else 'does not hold'} here (within 2 points).")
    top = df.sort_values("session").groupby(RUN, sort=False)["top1"]
    bounded = top.apply(lambda x: bool((x.iloc[1:] <= x.iloc[0] + 1e-9).all()))
    out.append(f"The base session's accuracy bounds the rest (every FSCIL table): top-1 after every later session is at "
               f"most session 1's in {int(bounded.sum())} of {len(bounded)} (method, trial) runs"
               + (f"; not in {', '.join(sorted(set(b[1] for b in bounded[~bounded].index)))}." if (~bounded).any() else "."))
    last, avg = (over[over.metric == m].set_index("method")["mean"] for m in
                 ("top1_last_session", "top1_average_over_sessions"))
    gap = (avg - last).dropna()
    out.append(f"The average over sessions is not the last session's accuracy (FOSTER issue #4): it is higher by "
               f"{100 * gap.min():.1f} to {100 * gap.max():.1f} points across these methods.")
    return out


def paired_table(diffs: pd.DataFrame) -> str:
    """Markdown: rows = methods, columns = the summaries over sessions, cells = difference to the baseline."""
    wide = diffs.assign(cell=[_cell(a, c, s) for a, c, s in zip(diffs.difference, diffs.ci95, diffs.significant)]
                        ).pivot(index="method", columns="metric", values="cell")
    wide = wide.reindex(list(dict.fromkeys(diffs.method)))[[m for m in OVERALL if m in set(diffs.metric)]]
    wide.columns = [SHORT[m] for m in wide.columns]
    return markdown_table(wide)


def plot(summ: pd.DataFrame, path: Path) -> None:
    """Accuracy against session, one line per method with its shaded 95 % interval; panels top-1, base, new."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("top1", "top-1, all classes seen"), ("base_accuracy", "base classes"), ("new_accuracy", "new classes"))
    methods = list(dict.fromkeys(summ.method))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), sharex=True)
    for ax, (m, title) in zip(axes, panels):
        for i, method in enumerate(methods):
            g = summ[(summ.metric == m) & (summ.method == method)].dropna(subset=["mean"]).sort_values("session")
            colour = plt.cm.tab10(i % 10)
            ax.plot(g["session"], 100 * g["mean"], marker="o", ms=3, color=colour, label=method)
            ax.fill_between(g["session"], 100 * (g["mean"] - g["ci95"].fillna(0)),
                            100 * (g["mean"] + g["ci95"].fillna(0)), color=colour, alpha=0.2)
        ax.set(xlabel="session (1 = base)", ylabel="accuracy (%)", title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(methods), 5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * ((len(methods) + 4) // 5), 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def markdown(summ: pd.DataFrame, over: pd.DataFrame, diffs: pd.DataFrame, df: pd.DataFrame, seconds: float) -> str:
    """The report: top-1 per session with the summaries, base and new accuracy per session, paired differences."""
    trials, reps = df.trial.nunique(), df.representation.nunique()
    over_what = f"{trials} trials" if reps == 1 else f"{reps} representations (each the mean of {trials} trials)"
    baseline = diffs.baseline.iloc[0] if len(diffs) else "the baseline"
    parts = [f"### top-1 (%) on every class seen so far, after each session (mean ± 95 % interval over {over_what})\n\n"
             + session_table(summ, "top1", over, ("top1_last_session", "top1_average_over_sessions",
                                                  "performance_drop")),
             "### base-class accuracy (%) after each session\n\n" + session_table(summ, "base_accuracy", over, ()),
             "### new-class accuracy (%) after each session\n\n"
             + session_table(summ, "new_accuracy", over, ("harmonic_mean_last_session",))]
    if len(diffs):
        parts.append(f"### paired differences to {baseline} (points; * = the interval excludes 0)\n\n"
                     + paired_table(diffs))
    checks = trend_checks(df, over, diffs)
    if checks:
        parts.append("### published trends, checked on these numbers\n\n" + "\n".join(f"- {c}" for c in checks))
    parts.append(f"{len(df.groupby(RUN))} cells ({df.method.nunique()} methods × {trials} trials × {reps} "
                 f"representation(s)), {seconds:.0f} s (cells found on disk cost nothing).")
    return "\n\n".join(parts)


def write_report(df: pd.DataFrame, out: Path, baseline: str, seconds: float) -> str:
    """Write `fscil.csv`, `overall.csv`, `summary.csv` (per session), `summary_overall.csv`, `paired.csv`,
    `tables.md` and `fscil.png` under `out`; returns the markdown."""
    per_run = overall(df)
    summ = summarise(df, ["method", "session"], PER_SESSION)
    over = summarise(per_run, ["method"], OVERALL)
    diffs = paired(per_run, baseline, OVERALL, []) if baseline in set(df.method) else pd.DataFrame()
    write_csv(df, out / "fscil.csv")
    write_csv(per_run, out / "overall.csv")
    write_csv(summ, out / "summary.csv")
    write_csv(over, out / "summary_overall.csv")
    write_csv(diffs, out / "paired.csv")
    text = markdown(summ, over, diffs, df, seconds)
    with atomic_path(out / "tables.md") as tmp:
        tmp.write_text(text + "\n")
    plot(summ, out / "fscil.png")
    return text
