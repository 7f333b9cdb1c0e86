"""Training seeds in the report: how much of a cell's spread comes from retraining the representation.

Run folders `<recipe>-seed<k>` are the training seeds of one recipe (`lowshot.run.seed_run`; `--seeds` makes
them). The main tables average over seeds × experiments (`lowshot.io.tables.summary`); here: each seed on its
own (`per_seed.csv`), the variance components of every cell (σ_seed, the between-seed standard deviation,
against σ_draw, the within-seed one between shot draws), and the episodes of the seeds' run folders
(`episodes_seeds.csv`), whose episodes are drawn per seed (nested: the interval is over the seed means).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence

import pandas as pd

from lowshot.io.tables import format_mean_ci, markdown_table, summary, write_csv
from lowshot.run import RunFolder, split_seed_run
from lowshot.stats import from_seed_means, mean_ci

SEED_METRICS = ("top1_novel", "top1_all")
EPISODE_KEYS = ["head", "ways", "shots", "queries", "query_dirichlet"]


def seed_markdown(summ: pd.DataFrame, metrics: Sequence[str] = SEED_METRICS) -> str:
    """Markdown: per recipe with several seeds and metric, rows method, cells σ_seed / σ_draw (seed share)."""
    parts = []
    multi = summ[summ["seeds"] > 1] if "seeds" in summ else summ.iloc[:0]
    for (rep, setup, metric), g in multi[multi["metric"].isin(metrics)].groupby(["representation", "setup", "metric"]):
        cell = [f"{a:.2f} / {b:.2f} ({100 * c:.0f} %)" for a, b, c in zip(g["sd_seed"], g["sd_draw"], g["seed_share"])]
        wide = g.assign(cell=cell).pivot(index="method", columns="n", values="cell")
        wide.columns = [f"n={n}" for n in wide.columns]
        seeds, draws = int(g["seeds"].max()), int(g["runs"].max() // g["seeds"].max())
        parts.append(f"### {rep} / {metric} (setup {setup}, {seeds} seeds × {draws} experiments): σ_seed / σ_draw "
                     f"(points) and the seed's share of a one-seed mean's variance\n\n{markdown_table(wide)}")
    if not parts:
        return ""
    return ("## Training seeds\n\nσ_seed: standard deviation between training seeds of a cell's mean (its draw "
            "noise removed); σ_draw: standard deviation between shot draws within a seed; share: "
            "σ²_seed / (σ²_seed + σ²_draw / J), the part of a one-seed result's variance that comes from the seed.\n\n"
            + "\n\n".join(parts))


def episodes_long(folders: Sequence[str]) -> pd.DataFrame:
    """The `episodes.csv` of the run folders whose `results` folders are reported, with representation and recipe."""
    frames = []
    for folder in folders:
        path = RunFolder(Path(folder).parent).path("episodes") / "episodes.csv"
        if Path(folder).name == "results" and path.is_file():
            frames.append(pd.read_csv(path).assign(representation=Path(folder).resolve().parent.name))
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    return df.assign(recipe=df["representation"].map(lambda x: split_seed_run(x)[0]))


def episodes_across_seeds(long: pd.DataFrame) -> pd.DataFrame:
    """Per recipe with several seeds and episode configuration: accuracy (%) over the seeds' episodes, with
    σ_seed and σ_draw (between episodes); ECE (%), NLL and Brier as means over the seeds ± interval over them."""
    out = []
    for key, g in long.groupby(["recipe"] + EPISODE_KEYS, sort=True, dropna=False):
        if g["representation"].nunique() < 2:
            continue
        episodes = float(len(g) / (1.0 / g["episodes"]).sum())
        sd = g["sd"] if "sd" in g else _sd_from_ci(g)
        ci = from_seed_means(100 * g["mean_acc"], float(((100 * sd) ** 2).mean()), episodes)
        row = {**dict(zip(["representation"] + EPISODE_KEYS, key)), "seeds": ci.seeds, "episodes": int(g["episodes"].min()),
               "mean_acc": ci.mean, "ci95": ci.ci95, "sd_seed": ci.sd_seed, "sd_draw": ci.sd_draw}
        for m, factor in (("ece", 100), ("nll", 1), ("brier", 1)):
            if m in g:
                row[m], row[m + "_ci95"], _ = mean_ci(factor * g[m].to_numpy(float))
        out.append(row)
    return pd.DataFrame(out)


def _sd_from_ci(g: pd.DataFrame) -> pd.Series:
    """A seed's standard deviation between episodes from its interval (episodes files without an `sd` column)."""
    from lowshot.stats import t_quantile
    return pd.Series([c * math.sqrt(e) / t_quantile(0.975, e - 1) for c, e in zip(g["ci95"], g["episodes"])],
                     index=g.index)


def episodes_markdown(table: pd.DataFrame) -> str:
    cells = [f"{format_mean_ci(m, c)} (σ_seed {a:.2f}, σ_episode {b:.2f})"
             for m, c, a, b in zip(table["mean_acc"], table["ci95"], table["sd_seed"], table["sd_draw"])]
    wide = table.assign(config=[f"{w}-way {s}-shot" for w, s in zip(table["ways"], table["shots"])], cell=cells)
    wide = wide.assign(row=wide["representation"] + " / " + wide["head"]).pivot(index="row", columns="config",
                                                                                  values="cell")
    return ("## Episodes across training seeds (top-1 %, mean ± 95 % interval over the seeds' means)\n\n"
            + markdown_table(wide))


def seeds_report(df: pd.DataFrame, summ: pd.DataFrame, folders: Sequence[str], out: Path) -> List[str]:
    """Write `per_seed.csv` (and `episodes_seeds.csv`) when some recipe has several seeds; return markdown parts."""
    if not (df.groupby("recipe")["representation"].nunique() > 1).any():
        return []
    write_csv(summary(df, by="representation"), out / "per_seed.csv")
    text = [seed_markdown(summ)]
    episodes = episodes_long(folders)
    table = episodes_across_seeds(episodes) if len(episodes) else pd.DataFrame()
    if len(table):
        write_csv(table, out / "episodes_seeds.csv")
        text.append(episodes_markdown(table))
    return [t for t in text if t]


def seed_folders(folders: Sequence[str], seeds: Sequence[int]) -> List[str]:
    """`--seeds`: each `<run>/results` folder becomes the results folders of `<run>-seed<k>` for every seed."""
    from lowshot.errors import InputError
    from lowshot.run import seed_run
    out = []
    for folder in folders:
        path = Path(folder)
        if path.name != "results":
            raise InputError(folder, "--seeds expands a run folder's results folder (<run>/results)")
        out += [str(Path(seed_run(str(path.parent), s)) / "results") for s in seeds]
    return out

