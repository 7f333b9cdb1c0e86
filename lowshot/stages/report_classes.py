"""Per-class report tables: accuracy per class, where the errors go (base ↔ novel), the hardest novel classes.

Result files hold, per cell, `per_class_top1` and `per_class_count` aligned with the setup's
classes sorted, and `base_novel_confusion` (test images by true base/novel × predicted
base/novel/other). Class names and which classes are base or novel come from the label split
file each result records in `input_files.splits`, checked against its fingerprint. Results of the training
seeds of one recipe (`names`, from the long table) are pooled under the recipe's name, the interval then
taken over the seeds' means (nested: `lowshot.stats.seed_draw_ci`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from lowshot.io.atomic import atomic_path
from lowshot.io.fingerprint import file_digest
from lowshot.io.results import method_name
from lowshot.io.splits import LabelSplits, load_label_splits
from lowshot.io.tables import format_mean_ci, markdown_table, write_csv
from lowshot.stats import seed_draw_ci

KEYS = ["representation", "method", "setup", "n"]
CONFUSION_CELLS = [(t, p) for t in ("base", "novel") for p in ("base", "novel", "other")]
HARDEST = 20


def _splits_of(r: dict, cache: Dict[str, Optional[LabelSplits]]) -> Optional[LabelSplits]:
    """The label splits a result was computed with, or None when its file is gone or has changed."""
    path = (r.get("input_files") or {}).get("splits")
    if path not in cache:
        same = path is not None and Path(path).is_file() and file_digest(path) == (r.get("inputs") or {}).get("splits")
        cache[path] = load_label_splits(path) if same else None
    return cache[path]


def _name(r: dict, names: Optional[Dict[str, tuple]]) -> tuple:
    """(representation or recipe, training seed) of a result."""
    return (names or {}).get(r["representation"], (r["representation"], None))


def _interval(values, g: pd.DataFrame):
    """(mean, half-width, N): over the experiments, or over the seeds' means when there are several seeds."""
    ci = seed_draw_ci(values, g["train_seed"].fillna(-1).to_numpy(), g["expid"].to_numpy(), crossed=False)
    return ci.mean, ci.ci95, int((~np.isnan(np.asarray(values, dtype=float))).sum())


def per_class_long(results: Sequence[dict], names: Optional[Dict[str, tuple]] = None) -> Tuple[pd.DataFrame, List[str]]:
    """One row per (cell, class of the setup): top-1 in %, test count, name and kind; plus notes on skipped results.

    Args:
        results: result dicts; those without per-class fields or without their split file are skipped.
        names: representation -> (recipe, training seed), for the seeds of a recipe.
    """
    rows, skipped, cache = [], set(), {}
    for r in results:
        splits = _splits_of(r, cache) if "per_class_top1" in r else None
        if splits is None:
            skipped.add((r.get("input_files") or {}).get("splits", "no per-class fields"))
            continue
        base, novel = splits.setup(r["setup"])
        classes = np.sort(np.concatenate([base, novel]))
        for c, acc, count in zip(classes, r["per_class_top1"], r["per_class_count"]):
            rep, seed = _name(r, names)
            rows.append({"representation": rep, "method": method_name(r), "setup": r["setup"], "train_seed": seed,
                         "n": r["n"], "expid": r["expid"], "class": int(c), "class_name": splits.label_names[c],
                         "kind": "novel" if c in novel else "base", "test_images": count,
                         "top1": np.nan if acc is None else 100 * acc})
    notes = [f"per-class tables leave out results whose split file is missing or changed: {s}" for s in sorted(skipped)]
    return pd.DataFrame(rows), notes


def per_class_summary(long: pd.DataFrame) -> pd.DataFrame:
    """Per (representation, method, setup, n, class): mean top-1 (%), its 95 % interval and N over experiments."""
    out = []
    cols = KEYS + ["class", "class_name", "kind", "test_images"]
    for key, g in long.groupby(cols, sort=True):
        mean, ci, runs = _interval(g["top1"].to_numpy(float), g)
        out.append(dict(zip(cols, key), top1=mean, ci95=ci, runs=runs))
    return pd.DataFrame(out, columns=cols + ["top1", "ci95", "runs"])


def confusion_long(results: Sequence[dict], names: Optional[Dict[str, tuple]] = None) -> pd.DataFrame:
    """One row per cell with its base/novel confusion counts and each count as % of its true row."""
    rows = []
    for r in results:
        if "base_novel_confusion" not in r:
            continue
        row = {k: r[k] for k in KEYS if k != "method"}
        row["representation"], row["train_seed"] = _name(r, names)
        row.update(method=method_name(r), expid=r["expid"])
        for (t, p), count in zip(CONFUSION_CELLS, np.ravel(r["base_novel_confusion"])):
            total = sum(r["base_novel_confusion"][0 if t == "base" else 1])
            row[f"{t}->{p}"], row[f"{t}->{p} %"] = int(count), 100 * count / total if total else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def confusion_summary(long: pd.DataFrame) -> pd.DataFrame:
    """Per (representation, method, setup, n): mean count and mean % of the true row ± 95 % interval, per cell."""
    out = []
    for key, g in long.groupby(KEYS, sort=True):
        for t, p in CONFUSION_CELLS:
            pct, ci, runs = _interval(g[f"{t}->{p} %"].to_numpy(float), g)
            out.append(dict(zip(KEYS, key), true=t, predicted=p, mean_count=float(g[f"{t}->{p}"].mean()),
                            percent_of_true=pct, ci95=ci, runs=runs))
    return pd.DataFrame(out)


def confusion_markdown(summ: pd.DataFrame) -> str:
    """Markdown: per representation/method, rows n, columns true→predicted in % of the true row.

    The "→other" columns (a class outside the setup) appear only when some head predicted one.
    """
    used = summ[(summ["predicted"] != "other") | (summ["mean_count"] > 0)]
    parts = []
    for (rep, method, setup), g in used.groupby(KEYS[:3], sort=True):
        g = g.assign(col=g["true"] + " → " + g["predicted"], cell=[format_mean_ci(m, c) for m, c in zip(g["percent_of_true"], g["ci95"])])
        wide = g.pivot(index="n", columns="col", values="cell")
        parts.append(f"### {rep} / {method} (setup {setup}): % of each true kind's test images\n\n{markdown_table(wide)}")
    return "\n\n".join(parts)


def hardest_novel(summ: pd.DataFrame, k: int = HARDEST) -> pd.DataFrame:
    """Per representation, its k novel classes of lowest mean top-1 over every method and n."""
    novel = summ[summ["kind"] == "novel"]
    rank = novel.groupby(["representation", "class"])["top1"].mean().sort_values(kind="stable")
    keep = rank.groupby(level="representation", group_keys=False).head(k).reset_index()[["representation", "class"]]
    return novel.merge(keep, on=["representation", "class"])


def plot_hardest(hard: pd.DataFrame, path: Path) -> None:
    """Dot plot of the hardest novel classes of one representation: top-1 ± 95 % interval per method, a panel per n."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = hard.groupby("class_name")["top1"].mean().sort_values(ascending=False).index  # hardest at the top
    ns, methods = sorted(hard["n"].unique()), sorted(hard["method"].unique())
    fig, axes = plt.subplots(1, len(ns), figsize=(3.2 * len(ns) + 2.5, 0.28 * len(order) + 1.5), sharey=True, squeeze=False)
    y = {name: i for i, name in enumerate(order)}
    for ax, n in zip(axes[0], ns):
        for j, m in enumerate(methods):
            g = hard[(hard["n"] == n) & (hard["method"] == m)]
            ax.errorbar(g["top1"], [y[c] + 0.15 * (j - (len(methods) - 1) / 2) for c in g["class_name"]],
                        xerr=g["ci95"].fillna(0), fmt="o", ms=3, color=plt.cm.tab10(j % 10), label=m)
        ax.set(xlim=(-2, 102), title=f"n={n}", xlabel="top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_yticks(range(len(order)), [name[:32] for name in order], fontsize=6)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{hard['representation'].iloc[0]}: the {len(order)} hardest novel classes")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def per_class_report(results: Sequence[dict], out: Path, plot: bool,
                     names: Optional[Dict[str, tuple]] = None) -> List[str]:
    """Write `per_class.csv`, `base_novel_confusion.csv` (+ the hardest-classes plots); return markdown parts.
    `names`: representation -> (recipe, training seed), to pool the seeds of a recipe."""
    long, notes = per_class_long(results, names)
    text = list(notes)
    if len(long):
        summ = per_class_summary(long)
        write_csv(summ, out / "per_class.csv")
        for rep, hard in hardest_novel(summ).groupby("representation"):
            if plot and len(hard):
                plot_hardest(hard, out / f"hardest_novel_{rep}.png")
    conf = confusion_long(results, names)
    if len(conf):
        summ = confusion_summary(conf)
        write_csv(summ, out / "base_novel_confusion.csv")
        text.insert(0, "## Base ↔ novel confusion (mean ± 95 % interval over experiments, or over training seeds)\n\n"
                    + confusion_markdown(summ))
    return text
