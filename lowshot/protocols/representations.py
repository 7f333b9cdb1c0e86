"""H&G's representation table (reference §5 and §11): does training with SGM or L2 help low-shot learning?

`make representations` (`benchmarks/representations.py`) trains one representation per auxiliary loss
and weight with the linear classifier, plus one with the cosine classifier, and then:

1. **sweep, setup 1 only**: `logreg` on every (loss, weight) of `sweep` and on `none`; each loss keeps
   the weight whose setup-1 score (`criterion`, in %, averaged over every n and experiment) is highest.
   Setup 2 never enters the choice.
2. **setup 2, chosen weights only**: `heads`, `logreg` with the analogy generator topped up to
   `max_per_label` for the losses of `generate_for` (H&G's table has "+ Gen" rows for the baseline and
   SGM only), and `cosine_heads` on the cosine-classifier representation only.
3. **the table**: rows = representation × method, columns = n (novel and all top-1 / top-5, base top-1,
   mean ± 95 % interval over the experiments), and paired differences (same experiments, same shots)
   of each chosen auxiliary loss against `none`.

Run folders: `<prefix>-none`, `<prefix>-<loss>-<weight>` (e.g. `runs/rep-sgm-0.002`), and `cosine_run`
(default `<prefix>-cosine`; with the demo's config and `runs/demo` it is `make demo`'s representation, trained
only if missing); the folder name is the representation's name in every table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from lowshot.errors import InputError
from lowshot.io.tables import (
    comparison_tables,
    format_mean_ci,
    markdown_table,
    paired_difference,
)

TABLE_METRICS = ("top1_novel", "top5_novel", "top1_all", "top5_all", "top1_base")


@dataclass
class RepresentationsConfig:
    """What `make representations` trains and runs (configs/representations.json)."""

    linear_config: str = "configs/rep_linear.json"  # train config of every linear-classifier representation
    cosine_config: str = "configs/demo_train.json"  # train config of the cosine-classifier representation
    cosine_run: Optional[str] = None  # its run folder (default <prefix>-cosine; runs/demo shares make demo's run)
    prefix: str = "runs/rep"
    sweep: Dict[str, List[float]] = field(default_factory=lambda: {"l2": [0.03], "sgm": [0.02], "batchsgm": [5.0]})
    criterion: str = "top1_all"  # setup-1 logreg metric (mean over n and experiments) that picks the weight
    heads: List[str] = field(default_factory=lambda: ["logreg", "cosine_ncm"])
    cosine_heads: List[str] = field(default_factory=lambda: ["imprint"])
    max_per_label: int = 20  # analogy generation tops each novel class up to this many rows
    generate_for: List[str] = field(default_factory=lambda: ["none", "sgm", "cosine"])  # H&G's "+ Gen" rows
    seed: int = 0


def run_name(prefix: str, loss: str, weight: float = 0.0) -> str:
    """`<prefix>-none`, `<prefix>-cosine`, or `<prefix>-<loss>-<weight>` (weight in %g form)."""
    return f"{prefix}-{loss}" if loss in ("none", "cosine") else f"{prefix}-{loss}-{weight:g}"


def cosine_run(cfg: RepresentationsConfig) -> str:
    """The cosine-classifier representation's run folder."""
    return cfg.cosine_run or run_name(cfg.prefix, "cosine")


def sweep_runs(cfg: RepresentationsConfig) -> List[Tuple[str, float, str]]:
    """(loss, weight, run folder) of every linear-classifier representation, `none` first."""
    if "none" in cfg.sweep or "cosine" in cfg.sweep:
        raise InputError(None, "sweep: list auxiliary losses only; `none` and the cosine run are always trained")
    runs = [("none", 0.0, run_name(cfg.prefix, "none"))]
    return runs + [(loss, float(w), run_name(cfg.prefix, loss, w)) for loss, ws in cfg.sweep.items() for w in ws]


def setup1_scores(df: pd.DataFrame, criterion: str) -> pd.Series:
    """Mean of `criterion` (%) over every n and experiment of setup-1 `logreg`, per representation."""
    rows = df[(df["setup"] == 1) & (df["method"] == "logreg")]
    if rows.empty:
        raise InputError(None, "no setup-1 logreg results to choose the auxiliary weights from")
    return rows.groupby("representation")[criterion].mean()


def choose_weights(runs: Sequence[Tuple[str, float, str]], scores: pd.Series) -> Dict[str, Tuple[float, str]]:
    """loss -> (weight, run folder) with the highest setup-1 score; ties go to the smaller weight."""
    chosen: Dict[str, Tuple[float, str]] = {}
    for loss, weight, run in sorted(runs, key=lambda r: (r[0], r[1])):
        name = run.rstrip("/").split("/")[-1]
        if name not in scores.index:
            raise InputError(None, f"no setup-1 score for {name}: run its setup-1 benchmark first")
        best = chosen.get(loss)
        if best is None or scores[name] > scores[best[1].rstrip("/").split("/")[-1]]:
            chosen[loss] = (weight, run)
    return chosen


def sweep_table(runs: Sequence[Tuple[str, float, str]], df: pd.DataFrame, criterion: str,
                chosen: Dict[str, Tuple[float, str]], train_stats: Dict[str, Dict[str, float]]) -> str:
    """Markdown: one row per swept representation, setup-1 logreg `criterion` per n and its mean.

    `train_stats[name]` holds the last epoch's `val_top1` (base-class test accuracy, fraction) and `aux`.
    """
    rows = df[(df["setup"] == 1) & (df["method"] == "logreg")]
    per_n = rows.groupby(["representation", "n"])[criterion].mean().unstack("n")
    out = []
    for loss, weight, run in runs:
        name = run.rstrip("/").split("/")[-1]
        stats = train_stats.get(name, {})
        mark = loss != "none" and chosen.get(loss, (None, None))[1] == run
        row = {"representation": name + (" (chosen)" if mark else ""),
               "loss": loss, "weight": f"{weight:g}",
               "train base top-1": f"{100 * stats['val_top1']:.1f}" if "val_top1" in stats else "",
               "final aux": f"{stats['aux']:.3g}" if "aux" in stats else ""}
        row.update({f"n={n}": f"{per_n.loc[name, n]:.2f}" for n in per_n.columns})
        row["mean"] = f"{per_n.loc[name].mean():.2f}"
        out.append(row)
    return markdown_table(pd.DataFrame(out).set_index("representation"))


def difference_table(df: pd.DataFrame, pairs: Sequence[Tuple[str, str]], metrics: Sequence[str] = TABLE_METRICS) -> str:
    """Markdown: per (A − B, method), the paired setup-2 difference per n as mean ± 95 % interval (points)."""
    parts = []
    for a, b in pairs:
        diff = paired_difference(df[df["setup"] == 2], a, b, by="representation")
        diff = diff[diff["metric"].isin(metrics)]
        for method, g in diff.groupby("method", sort=True):
            cells = g.assign(cell=[format_mean_ci(m, c) for m, c in zip(g["difference"], g["ci95"])])
            wide = cells.pivot(index="metric", columns="n", values="cell").reindex([m for m in metrics if m in set(g["metric"])])
            wide.columns = [f"n={n}" for n in wide.columns]
            parts.append(f"**{a} − {b}, {method}** (setup 2, paired over experiments, points)\n\n{markdown_table(wide)}")
    return "\n\n".join(parts)


def table_methods(cfg: RepresentationsConfig) -> List[str]:
    """The methods the table shows (a shared run folder, e.g. the demo's, may hold results of other heads)."""
    return cfg.heads + cfg.cosine_heads + [f"logreg+analogies(M={cfg.max_per_label})"]


def representation_tables(summ: pd.DataFrame) -> str:
    """Markdown: H&G's tables on setup 2, one per metric, rows = representation / method, columns = n."""
    return comparison_tables(summ[summ["setup"] == 2], metrics=TABLE_METRICS)
