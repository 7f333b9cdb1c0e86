"""Per-episode results and the tables that pair them: one table per episode file, never across files.

`lowshot episodes` writes, per (head, episode file), one JSON under `<out>/per_episode/<setting>/`
holding every episode's accuracy, the episode file's path and fingerprint, the data set the
episodes come from (B) and the one the representation was trained on (A). Results of one setting
(data set, split, ways, shots, queries, episode count, seed, sampler) pair episode by episode only
when they share the episode file: `lowshot report <episodes folders>` refuses results of one setting
scored on different files, with a line naming both fingerprints, rather than average them.

Each table names its protocol, split, ways, shots, queries, episode count and the file's
fingerprint; a row gives the mean accuracy with its 95 % interval over episodes (Student t), its
difference to the best row of the table, paired episode by episode (mean ± 95 % interval of the
per-episode differences), whether the head is transductive, and its time per 1,000 episodes.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from lowshot.data.cross import data_tag
from lowshot.errors import InputError
from lowshot.io.atomic import atomic_path, write_json
from lowshot.stats import mean_ci

RESULT_FORMAT = "lowshot-episode-result/1"
PER_EPISODE = "per_episode"
COLUMNS = ["representation", "source_dataset", "trained_on", "dataset", "dataset_label", "split", "setup", "protocol", "setting", "head",
           "head_params", "transductive", "ways", "shots", "queries", "episodes", "query_dirichlet", "mean_acc",
           "ci95", "sd", "ece", "nll", "brier", "seconds", "seconds_per_1000", "episode_file", "fingerprint"]


def result_path(out: Path, key: str, label: str) -> Path:
    """Where the per-episode result of a head (`label`: its name, and its options' digest) on setting `key` lies."""
    safe = label.replace("/", "_").replace(" ", "")
    return Path(out) / PER_EPISODE / key.replace("/", "_") / f"{safe}.json"


def make_record(who: Dict[str, Any], setting, ep, fingerprint: str, acc: np.ndarray, seconds: float) -> dict:
    """One head's result on one episode file (`ep`, of `setting`): `who` (representation, head, head_params,
    transductive, source_dataset: A, trained_on: A's data tag, checkpoint_sha1), what it was scored on (B, split, the file), its accuracy
    on every episode (E,), mean ± 95 % interval, and its time."""
    mean, half, n = mean_ci(acc)
    meta = ep.meta
    label = data_tag(meta["dataset"], meta["data"])
    return {**who, "dataset": meta["dataset"], "data": meta["data"], "dataset_label": label, "split": meta["split"],
            "setup": meta["setup"], "protocol": setting.protocol, "setting": setting.name, "words": setting.words(),
            "ways": setting.ways or "5-50", "shots": setting.shots or "imbalanced", "queries": setting.queries or "<=10",
            "episodes": n, "seed": meta["seed"], "query_dirichlet": setting.query_dirichlet,
            "episode_file": str(ep.path), "fingerprint": fingerprint,
            "key": f"{label} {meta['split']} {setting.name} seed{meta['seed']}", "mean_acc": mean, "ci95": half,
            "sd": float(np.std(acc, ddof=1)) if n > 1 else float("nan"),
            "seconds": round(seconds, 3), "seconds_per_1000": 1000 * seconds / n,
            "accs": [round(float(a), 6) for a in acc]}


def write_result(path: Path, record: dict) -> None:
    write_json(path, {"format": RESULT_FORMAT, **record})


def read_results(folder: str | Path) -> List[dict]:
    """Every per-episode result under `folder` (an episodes output folder), each with its `path`."""
    root = Path(folder) / PER_EPISODE
    if not root.is_dir():
        raise InputError(folder, f"holds no {PER_EPISODE}/ results (run `lowshot episodes` first)")
    out = []
    for path in sorted(root.rglob("*.json")):
        with open(path) as f:
            record = json.load(f)
        if record.get("format") == RESULT_FORMAT:
            out.append({**record, "path": str(path)})
    return out


def check_one_file(records: Sequence[dict]) -> None:
    """Refuse results of one setting scored on different episode files, naming both fingerprints."""
    first: Dict[str, dict] = {}
    for r in records:
        a = first.setdefault(r["key"], r)
        if a["fingerprint"] != r["fingerprint"]:
            raise InputError(r.get("path"), f"was scored on episode file {r['fingerprint']} ({r['episode_file']}), "
                                            f"{a.get('path')} on {a['fingerprint']} ({a['episode_file']}), both "
                                            f"{r['key']}: a report never pairs or averages results from different "
                                            "episode files; re-run `lowshot episodes` for the older one")


def _label(r: dict) -> str:
    params = r.get("head_params") or {}
    return r["head"] + (" " + json.dumps(params, sort_keys=True) if params else "")


def _trained_on(r: dict) -> str:
    return r.get("trained_on") or r.get("source_dataset") or r["dataset"]


def table(records: Sequence[dict]) -> str:
    """The markdown table of results on ONE episode file (see the module docstring)."""
    r0 = records[0]
    accs = [np.asarray(r["accs"], float) for r in records]
    best = int(np.argmax([a.mean() for a in accs]))
    lines = [f"**{r0['dataset_label']} {r0['split']} classes (setup {r0['setup']}): {r0['words']}; "
             f"{r0['episodes']} episodes**", "",
             f"Protocol: {r0['protocol']}; split: {r0['split']}; episode file `{r0['episode_file']}`, fingerprint "
             f"`{r0['fingerprint']}`; top-1 accuracy (%), mean ± 95 % interval over episodes; Δ: difference to the "
             "best row, paired episode by episode.", "",
             "| representation | trained on | head | kind | top-1 (%) | Δ to best (points) | s / 1,000 episodes |",
             "|---|---|---|---|---|---|---|"]
    for i, (r, a) in enumerate(zip(records, accs)):
        mean, half, _ = mean_ci(100 * a)
        diff = "best" if i == best else "{:+.2f} ± {:.2f}".format(*mean_ci(100 * (a - accs[best]))[:2])
        kind = "transductive" if r["transductive"] else "inductive"
        lines.append(f"| {r['representation']} | {_trained_on(r)} | {_label(r)} | {kind} | {mean:.2f} ± {half:.2f} "
                     f"| {diff} | {r['seconds_per_1000']:.3g} |")
    return "\n".join(lines) + "\n"


def tables(records: Sequence[dict]) -> str:
    """One table per episode file, in the order the settings first appear; refuses mixed files."""
    check_one_file(records)
    keys = list(dict.fromkeys(r["key"] for r in records))
    return "\n".join(table([r for r in records if r["key"] == k]) for k in keys)


def write_csv(path: Path, records: Sequence[dict]) -> None:
    """One row per (representation, head, episode file), without the per-episode accuracies."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "head_params": json.dumps(r.get("head_params") or {}, sort_keys=True)}
                         for r in records)


def paired_rows(records: Sequence[dict]) -> List[dict]:
    """Every pair of results on one episode file: mean difference (points) and its paired 95 % interval."""
    out = []
    for key in dict.fromkeys(r["key"] for r in records):
        group = [r for r in records if r["key"] == key]
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                mean, half, n = mean_ci(100 * (np.asarray(a["accs"], float) - np.asarray(b["accs"], float)))
                out.append({"key": key, "fingerprint": a["fingerprint"], "a": f"{a['representation']}/{_label(a)}",
                            "b": f"{b['representation']}/{_label(b)}", "difference": mean, "ci95": half, "episodes": n})
    return out


def report_episodes(folders: Sequence[str], out_dir: str | None) -> str:
    """`lowshot report` on episodes folders: the paired tables (markdown, returned and written to
    `<out>/episodes_report.md`), `episodes_long.csv` and every pairwise difference in `episodes_paired.csv`."""
    records = [r for d in folders for r in read_results(d)]
    text = tables(records)
    out = Path(out_dir or Path(folders[0]).parent / "report")
    write_csv(out / "episodes_long.csv", records)
    pairs = paired_rows(records)
    with atomic_path(out / "episodes_paired.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["key", "fingerprint", "a", "b", "difference", "ci95", "episodes"])
        writer.writeheader()
        writer.writerows(pairs)
    with atomic_path(out / "episodes_report.md") as tmp:
        tmp.write_text(text)
    return text + f"\nCSV tables written to {out}/"
