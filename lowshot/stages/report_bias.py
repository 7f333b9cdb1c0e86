"""Calibration and base ↔ novel bias in the report: what the confusion table cannot show.

Result files carry, per cell, the calibration of softmax(scores) (ECE, NLL, Brier; ECE and over-confidence
of the base and of the novel predictions apart), all-class top-1 at each novel prior of
`lowshot.metrics.PRIORS` (`all_top1_by_prior`) and, when the benchmark ran with `temperatures=true`,
ECE/NLL/Brier at each temperature of `lowshot.metrics.TEMPERATURES`. Here: a temperature and a prior are
chosen on setup 1 (lowest mean NLL, highest mean all-class top-1, per representation, method and n) and
applied to the other setup's cells; the prior sweep is summarised (`prior_sweep.csv`); and one plot per
head family (`bias_<family>.png`) shows all-class top-1 against the prior and the calibration of each side.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pandas as pd

from lowshot.io.atomic import atomic_path
from lowshot.io.results import method_name
from lowshot.io.tables import interval_columns, markdown_table, shared_draws
from lowshot.stats import seed_draw_ci

CELL = ["representation", "method", "setup", "n", "expid"]
CHOICE = ["representation", "method", "n"]
# heads grouped for the plots (a head not listed is drawn in "other")
FAMILIES: Dict[str, Sequence[str]] = {
    "logistic regression": ("logreg",),
    "imprinting and weight generation": ("imprint", "imprint_ft", "rand_ft", "raw_imprint", "weight_generator"),
    "prototypes and clusters": ("protonet", "cosine_ncm", "repmet", "magnet"),
    "meta-learned": ("matching", "pmn_hallucinator"),
    "transductive": ("bd_cspn", "laplacian_shot", "pt_map", "tim", "transductive_ft"),
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def family(head: str) -> str:
    return next((name for name, heads in FAMILIES.items() if head in heads), "other")


def curve_long(results: Sequence[dict], key: str, x: str, names: Sequence[str], xs: Sequence[float]) -> pd.DataFrame:
    """One row per (cell, point of a stored curve `key`): the cell's coordinates, `x` and the curve's values."""
    rows = []
    for r in results:
        for point, values in zip(xs, r.get(key) or ()):
            values = values if isinstance(values, list) else [values]
            rows.append({"representation": r["representation"], "method": method_name(r), "setup": r["setup"],
                         "n": r["n"], "expid": r["expid"], "head": r["head"], x: point, **dict(zip(names, values))})
    return pd.DataFrame(rows, columns=CELL + ["head", x] + list(names))


def prior_long(results: Sequence[dict]) -> pd.DataFrame:
    """All-class top-1 (%) per cell and novel prior."""
    from lowshot.metrics import PRIORS
    long = curve_long(results, "all_top1_by_prior", "prior", ["top1_all"], PRIORS)
    return long.assign(top1_all=100 * long["top1_all"])


def temperature_long(results: Sequence[dict]) -> pd.DataFrame:
    """ECE (%), NLL and Brier per cell and temperature (cells that stored the curve)."""
    from lowshot.metrics import TEMPERATURES
    long = curve_long(results, "calibration_by_temperature", "temperature", ["ece", "nll", "brier"], TEMPERATURES)
    return long.assign(ece=100 * long["ece"])


def choose_on_setup1(long: pd.DataFrame, x: str, y: str, best: str) -> pd.DataFrame:
    """The other setups' rows of `long` at the `x` whose mean `y` over setup 1's experiments is best
    (`best` = "idxmax" or "idxmin") for the same representation, method and n."""
    s1 = long[long["setup"] == 1].groupby(CHOICE + [x])[y].mean().reset_index()
    if s1.empty:
        return long.iloc[:0]
    chosen = s1.loc[getattr(s1.groupby(CHOICE)[y], best)(), CHOICE + [x]]
    return long[long["setup"] != 1].merge(chosen, on=CHOICE + [x])


def add_setup1_choices(df: pd.DataFrame, results: Sequence[dict]) -> pd.DataFrame:
    """`df` (the long table) with `SETUP1_CHOICES` filled in for the cells of setups other than 1."""
    prior = choose_on_setup1(prior_long(results), "prior", "top1_all", "idxmax")
    prior = prior.rename(columns={"prior": "prior_setup1", "top1_all": "top1_all_prior_setup1"})
    temp = choose_on_setup1(temperature_long(results), "temperature", "nll", "idxmin")
    temp = temp.rename(columns={"temperature": "temperature_setup1", "ece": "ece_T", "nll": "nll_T", "brier": "brier_T"})
    for part in (prior, temp):
        part = part.drop(columns="head")
        df = df.drop(columns=[c for c in part.columns if c in df.columns and c not in CELL])
        df = df.merge(part, on=CELL, how="left")
    for name, value, chosen in (("ece_T1", "ece", "temperature_setup1"), ("top1_all_no_prior", "top1_all", "prior_setup1")):
        if value in df and chosen in df:
            df[name] = df[value].where(df[chosen].notna())
    return df


def prior_summary(results: Sequence[dict], df: pd.DataFrame) -> pd.DataFrame:
    """Per (recipe, method, setup, n, prior): all-class top-1 (%), mean ± 95 % interval (over seeds × experiments)."""
    cells = df[CELL + ["recipe", "train_seed", "shots_digest"]]
    long = prior_long(results).merge(cells, on=CELL)
    out = []
    for key, g in long.groupby(["recipe", "method", "setup", "n", "prior"], sort=True):
        ci = seed_draw_ci(g["top1_all"].to_numpy(float), g["train_seed"].fillna(-1).to_numpy(), g["expid"].to_numpy(),
                          shared_draws(g))
        out.append({**dict(zip(["representation", "method", "setup", "n", "prior"], key)),
                    "head": g["head"].iloc[0], **interval_columns(ci, len(g))})
    return pd.DataFrame(out)


def calibration_markdown(summ: pd.DataFrame) -> str:
    """Markdown: per metric group, rows representation / method, columns n (setups other than 1 when present)."""
    setups = summ["setup"].unique()
    summ = summ[summ["setup"] != 1] if len(setups) > 1 else summ
    parts = []
    for title, metrics in (("ECE (%) / NLL / Brier score of softmax(scores)", ("ece", "nll", "brier")),
                           ("ECE (%) of base predictions / of novel predictions", ("ece_pred_base", "ece_pred_novel")),
                           ("over-confidence (points, mean top-1 probability − accuracy) of base / novel predictions",
                            ("overconf_pred_base", "overconf_pred_novel")),
                           ("ECE (%) at T = 1 / temperature T chosen on setup 1 / ECE (%) / NLL / Brier at T (the cells "
                            "of the seeds run on setup 1)", ("ece_T1", "temperature_setup1", "ece_T", "nll_T", "brier_T")),
                           ("all-class top-1 (%): no prior / with the novel prior π chosen on setup 1 (π) (the cells of "
                            "the seeds run on setup 1)", ("top1_all_no_prior", "top1_all_prior_setup1", "prior_setup1"))):
        wide = _joined(summ, metrics)
        if wide is not None:
            parts.append(f"### {title}\n\n{markdown_table(wide)}")
    return "\n\n".join(parts)


def _joined(summ: pd.DataFrame, metrics: Sequence[str]):
    """Rows representation / method, columns n, cells the metrics' means joined by " / " (None if one is absent)."""
    g = summ[summ["metric"].isin(metrics)]
    if set(g["metric"]) != set(metrics):
        return None
    g = g.assign(row=g["representation"] + " / " + g["method"])
    cell = g.pivot_table(index=["row", "n"], columns="metric", values="mean", aggfunc="first")[list(metrics)]
    text = cell.apply(lambda r: " / ".join(_short(m, v) for m, v in r.items()), axis=1).unstack("n")
    text.columns = [f"n={n}" for n in text.columns]
    return text


def _short(metric: str, value: float) -> str:
    if np.isnan(value):
        return "–"
    if metric == "temperature_setup1":
        return f"{value:.3g}"
    return f"{value:.2f}" if metric != "prior_setup1" else f"({value:.2f})"


def bias_report(results: Sequence[dict], df: pd.DataFrame, summ: pd.DataFrame, out: Path, plot: bool) -> List[str]:
    """Write `prior_sweep.csv` (+ `bias_<family>.png`); return the markdown part."""
    from lowshot.io.tables import write_csv
    text = []
    prior = prior_summary(results, df)
    if len(prior):
        write_csv(prior, out / "prior_sweep.csv")
        if plot:
            for name, rows in prior.groupby(prior["head"].map(family)):
                plot_family(name, rows, summ, out / f"bias_{re.sub(r'[^a-z0-9]+', '_', name)}.png")
    if "ece" in set(summ["metric"]):
        text.append("## Calibration and base ↔ novel bias (means over the experiments and seeds)\n\n"
                    + calibration_markdown(summ))
    return text


def plot_family(name: str, prior: pd.DataFrame, summ: pd.DataFrame, path: Path) -> None:
    """All-class top-1 against the novel prior at three n (dotted: without a prior), and ECE of base (solid)
    and novel (dashed) predictions against n; one colour and marker per representation / method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setup = prior["setup"].max()
    prior, summ = prior[prior["setup"] == setup], summ[summ["setup"] == setup]
    ns = sorted(prior["n"].unique())
    shown = sorted({ns[0], ns[len(ns) // 2], ns[-1]})
    lines = sorted(set(zip(prior["representation"], prior["method"])))
    many = len({rep for rep, _ in lines}) > 1
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(4.2 * (len(shown) + 1), 3.8))
    for i, (rep, method) in enumerate(lines):
        style = dict(color=plt.cm.tab10(i % 10), marker=MARKERS[i % len(MARKERS)], ms=4,
                     label=f"{rep} / {method}" if many else method)
        mine = summ[(summ["representation"] == rep) & (summ["method"] == method)]
        for ax, n in zip(axes, shown):
            g = prior[(prior["representation"] == rep) & (prior["method"] == method) & (prior["n"] == n)]
            ax.plot(g["prior"], g["mean"], **style)
            plain = mine[(mine["metric"] == "top1_all") & (mine["n"] == n)]["mean"]
            if len(plain):
                ax.axhline(plain.iloc[0], color=style["color"], ls=":", lw=1)
        for metric, ls in (("ece_pred_base", "-"), ("ece_pred_novel", "--")):
            g = mine[mine["metric"] == metric].sort_values("n")
            axes[-1].plot(g["n"], g["mean"], ls=ls, **{**style, "label": None})
    _label(axes, shown, name, setup)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _label(axes, shown: List[int], name: str, setup: int) -> None:
    for ax, n in zip(axes, shown):
        ax.set(xlabel="novel prior π", ylabel="all-class top-1 (%)", title=f"{name}, n={n} (setup {setup})")
        ax.grid(alpha=0.3)
    axes[-1].set(xscale="log", xticks=[1, 2, 5, 10, 20], xticklabels=["1", "2", "5", "10", "20"],
                 xlabel="shots per novel class (n)", ylabel="ECE (%)",
                 title="ECE: base predictions (solid), novel (dashed)")
    axes[-1].grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="dotted: no prior", title_fontsize=7)
