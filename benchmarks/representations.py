"""`make representations`: H&G's representation table on the glyph set (see lowshot/representations.py).

    .venv/bin/python benchmarks/representations.py [--config configs/representations.json]

Trains `none` and every (auxiliary loss, weight) of the sweep with the linear classifier, and the
cosine-classifier representation; benchmarks `logreg` on setup 1 for every one of them; keeps, per
loss, the weight with the best setup-1 score; then runs the setup-2 grid on `none`, the chosen weights
and the cosine representation, and writes `<prefix>-report/representations.md` (+ CSVs, timings.json).
Every stage skips work already done, so a rerun after an interruption continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List

from lowshot.config import resolve_config
from lowshot.io.atomic import atomic_path, write_json
from lowshot.io.results import check_same_inputs, long_table, read_results
from lowshot.io.tables import summary, write_csv
from lowshot.protocols.representations import (
    RepresentationsConfig,
    choose_weights,
    cosine_run,
    difference_table,
    representation_tables,
    setup1_scores,
    sweep_runs,
    sweep_table,
    table_methods,
)
from lowshot.stages.benchmark import BenchmarkConfig, benchmark
from lowshot.stages.features import FeaturesConfig, features
from lowshot.stages.generate import GenerateConfig, generate
from lowshot.stages.train import TrainConfig, train

TIMES: Dict[str, float] = {}


def timed(what: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    TIMES[what] = TIMES.get(what, 0.0) + time.perf_counter() - start
    print(f"[representations] {what}: {TIMES[what]:.0f} s", flush=True)
    return out


def prepare(run: str, config: str, seed: int, **train_flags) -> None:
    """Train (or resume) the representation and extract its features."""
    name = Path(run).name
    timed(f"train {name}", train, resolve_config(TrainConfig, config, None, run=run, seed=seed, **train_flags))
    timed(f"features {name}", features, FeaturesConfig(run=run, seed=seed))


def run_grid(run: str, setup: int, heads: List[str], seed: int, **extra) -> None:
    out = Path(run) / ("results" if setup == 2 else "results-setup1")
    cfg = BenchmarkConfig(run=run, heads=heads, setup=setup, out_dir=str(out), seed=seed, **extra)
    timed(f"benchmark setup {setup} {Path(run).name} {','.join(heads)}{' +gen' if extra else ''}", benchmark, cfg)


def results(runs: List[str], folder: str):
    found = [r for run in runs for r in read_results(Path(run) / folder)]
    check_same_inputs(found)
    return long_table(found)


def last_epoch(run: str) -> Dict[str, float]:
    lines = (Path(run) / "train_log.jsonl").read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def setup2(cfg: RepresentationsConfig, run: str, loss: str) -> None:
    """The setup-2 grid of one representation: heads, logreg + analogies, cosine-only heads."""
    run_grid(run, 2, cfg.heads + (cfg.cosine_heads if loss == "cosine" else []), cfg.seed)
    if loss in cfg.generate_for:
        timed(f"generate {Path(run).name}", generate, GenerateConfig(run=run, seed=cfg.seed))
        run_grid(run, 2, ["logreg"], cfg.seed, generator="analogies", max_per_label=cfg.max_per_label)


def main(path: str) -> None:
    """Loss by loss (`none` first, the cosine classifier last): train the sweep, choose on setup 1,
    run setup 2 on the chosen weight, so that an interrupted run has finished rows to show."""
    cfg = resolve_config(RepresentationsConfig, path)
    runs, cosine = sweep_runs(cfg), cosine_run(cfg)
    chosen = {}
    for loss in dict.fromkeys(loss for loss, _, _ in runs):
        mine = [r for r in runs if r[0] == loss]
        for _, weight, run in mine:
            prepare(run, cfg.linear_config, cfg.seed, aux_loss=loss, aux_weight=weight)
            run_grid(run, 1, ["logreg"], cfg.seed)
        chosen.update(choose_weights(mine, setup1_scores(results([r for _, _, r in mine], "results-setup1"),
                                                         cfg.criterion)))
        setup2(cfg, chosen[loss][1], loss)
    prepare(cosine, cfg.cosine_config, cfg.seed, aux_loss="none", aux_weight=0.0)
    setup2(cfg, cosine, "cosine")
    df1 = results([r for _, _, r in runs], "results-setup1")
    write_report(cfg, runs, df1, chosen, [run for _, run in chosen.values()] + [cosine])


def write_report(cfg: RepresentationsConfig, runs, df1, chosen, final: List[str]) -> None:
    df2 = results(final, "results")
    df2 = df2[df2["method"].isin(table_methods(cfg))]
    summ = summary(df2)
    out = Path(f"{cfg.prefix}-report")
    names = {loss: Path(run).name for loss, (_, run) in chosen.items()}
    pairs = [(names[loss], names["none"]) for loss in ("sgm", "l2", "batchsgm") if loss in names]
    stats = {Path(r).name: last_epoch(r) for _, _, r in runs}
    text = ["## Sweep (setup 1, logreg, " + cfg.criterion + " %, mean over 5 experiments)",
            sweep_table(runs, df1, cfg.criterion, chosen, stats),
            "## Setup 2", representation_tables(summ), "## Paired differences", difference_table(df2, pairs),
            f"This invocation's stages took {sum(TIMES.values()):.0f} s (stages already done are skipped: ~0 s)"]
    write_csv(df1, out / "setup1_long.csv")
    write_csv(df2, out / "setup2_long.csv")
    write_csv(summ, out / "setup2_summary.csv")
    write_json(out / "timings.json", {**TIMES, "config": str(cfg)})
    with atomic_path(out / "representations.md") as tmp:
        tmp.write_text("\n\n".join(text) + "\n")
    print("\n\n".join(text))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/representations.json")
    main(parser.parse_args().config)
