"""Episodic N-way K-shot evaluation (the prototypical-networks protocol) on cached features.

An episode draws N of the setup's novel classes and, from each, K support and `queries` query
rows of the TEST features (disjoint); labels are renumbered 0..N−1 and there are no base
classes. Accuracy over an episode's queries, averaged over `episodes` seeded episodes, is
reported with its 95 % interval (Student t over episodes). All heads see the same episodes.

Heads with an `episode_scores(support, query, task)` method are scored on a batch of episodes
at once (or asked only for their arg-max, `episode_predictions`, where that is cheaper), in chunks
whose features fill `head.episode_bytes` (default `CHUNK_BYTES`, 16 MiB: about 200 5-way episodes);
others are fitted episode by episode. Heads marked `episodic = False` (they need base
rows) and heads whose fit raises `InputError` on an episode are skipped with a note. Heads that
centre on the base classes (`cosine_ncm`, as SimpleShot) get the mean of the setup's base-class rows
of train.hdf5 as `task.base_mean`. Transductive heads (class attribute `transductive = True`: they
label an episode's queries together) are marked † in the table and `transductive` in the CSV.
`query_dirichlet` = a > 0 unbalances the queries: an episode's ways × queries queries are split
among its classes in proportions drawn from Dirichlet(a, …, a), as in Veilleux et al., "Realistic
Evaluation of Transductive Few-Shot Learning", NeurIPS 2021 (a = 2 there); same classes and support
rows as the balanced episodes of the same seed.

Every setting is scored on a fixed episode file (`lowshot.protocols.episode_files`): drawn once per
(data set, split, ways, shots, queries, count, seed, sampler) into `experiment_cfgs/<dataset>/episodes/`
and reused by every head and every representation of the data set; `settings` names them
(`standard`: 5-way 1- and 5-shot, 15 queries per class, 600 episodes; `standard-2000`,
`standard-10000`; `md-600`: Meta-Dataset's variable ways and shots, `lowshot.protocols.metadataset`).
Variable episodes are fitted one at a time. Per (head, file) the accuracy of every episode is written
under `<out_dir>/per_episode/` with the file's fingerprint, so `lowshot report` pairs heads and
representations episode by episode (`lowshot.protocols.episode_report`). `dataset` (B) scores the
cross-domain features of `lowshot features --dataset B` (in `<run>/cross/<B>/`), episodes drawn from
B's test classes; SimpleShot's centre is then the mean of the representation's own (A's) base rows.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from lowshot.data.cross import data_tag
from lowshot.errors import InputError
from lowshot.heads import HEADS, Task
from lowshot.io.atomic import atomic_path
from lowshot.io.features import FeatureSet, read_features
from lowshot.io.fingerprint import digest
from lowshot.io.splits import LabelSplits
from lowshot.protocols import episode_report
from lowshot.protocols.episode_files import Episodes, Setting, check_rows, episode_file, labels_digest, parse_settings
from lowshot.protocols.metadataset import draw_metadataset
from lowshot.metrics import episode_calibration
from lowshot.run import (
    RunFolder,
    check_compatible,
    check_same_representation,
    rows_of,
    data_key,
    shots_dir,
    splits_for,
    test_features_path,
    trained_model,
)
from lowshot.runtime import available_cpus, forked_map, pick_device, progress

CHUNK_BYTES = 1 << 24  # features of the episodes a batched head scores together, unless it says otherwise


QUICK_MS = 5.0  # the default heads cost at most this per 5-way 1-shot episode: about a minute for the defaults


def default_heads() -> List[str]:
    """The episodic heads (class attribute `episodic = True`) that cost at most QUICK_MS per episode on this CPU
    (`episode_ms`): every one but TIM (23 ms), whose 2,400 default episodes would take minutes; name it to run it."""
    return [name for name in HEADS.names() if getattr(HEADS.get(name), "episodic", False)
            and (HEADS.get(name).episode_ms or 0) <= QUICK_MS]


def announce(heads: List[str], episodes: int) -> None:
    """Say on stderr, before any work, which heads run on how many episodes and about how long they take here."""
    costs = {h: (HEADS.get(h).episode_ms or 0) * episodes / 1000 for h in heads}
    words = ", ".join(f"{h} (~{s:.0f} s)" if s >= 1 else h for h, s in costs.items())
    print(f"lowshot episodes: {episodes} episodes × {len(heads)} heads: {words}; about {sum(costs.values()):.0f} s "
          "on a 2-core CPU at 5-way (20-way costs more)", file=sys.stderr)


@dataclass
class EpisodesConfig:
    run: str = "runs/demo"
    features_dir: Optional[str] = None  # default: <run>/features
    test_features: Optional[str] = None  # default: <features_dir>/test.hdf5, else H&G's val.hdf5
    splits: Optional[str] = None  # default: label_splits/<dataset>.json
    heads: List[str] = field(default_factory=default_heads)
    head_params: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # head name -> kwargs
    models: Dict[str, str] = field(default_factory=dict)  # artefact -> trained-model file [default: the run's]
    ways: List[int] = field(default_factory=lambda: [5, 20])
    shots: List[int] = field(default_factory=lambda: [1, 5])
    queries: int = 15
    episodes: int = 600
    setup: int = 2
    seed: int = 0
    device: str = "auto"
    jobs: Optional[int] = None  # processes scoring episode files; default: the CPUs the process may use over its threads
    out_dir: Optional[str] = None  # default: <run>/episodes
    query_dirichlet: float = 0.0  # 0: `queries` per class; a > 0: class proportions ~ Dirichlet(a)
    settings: List[str] = field(default_factory=list)  # standard[-2000|-10000], 5w1s15q-600, md-600; []: ways × shots
    episode_file: Optional[str] = None  # score this episode file instead of the settings' files
    episodes_dir: Optional[str] = None  # default: experiment_cfgs/<dataset>/episodes
    dataset: Optional[str] = None  # cross-domain: data set B of `lowshot features --dataset B` (<run>/cross/<B>/)
    dataset_args: Dict[str, Any] = field(default_factory=dict)  # B's loader arguments, as given to `lowshot features`


SPLITS = {1: "val", 2: "test"}  # a setup's novel classes: a few-shot benchmark's val / test classes


def draw_episodes(labels: np.ndarray, classes: np.ndarray, ways: int, shots: int, queries: int, episodes: int,
                  seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row indices of `episodes` episodes: support (E, ways, shots) and query (E, ways, queries).

    Classes come from `classes` (those with at least shots + queries rows), rows from `labels`;
    support and query rows are disjoint. Seeded by (seed, ways, shots).
    """
    need = shots + queries
    rows = np.flatnonzero(np.isin(labels, classes))
    rows = rows[np.argsort(labels[rows], kind="stable")]
    uniq, start, count = np.unique(labels[rows], return_index=True, return_counts=True)
    ok = count >= need
    if ok.sum() < ways:
        raise InputError(None, f"{ways}-way {shots}-shot episodes with {queries} queries need {ways} novel "
                               f"classes with ≥ {need} test rows; only {int(ok.sum())} have them")
    start, count = torch.as_tensor(start[ok]), torch.as_tensor(count[ok])
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, ways, shots]).generate_state(1)[0]))
    cls = torch.rand(episodes, len(start), generator=gen).argsort(1)[:, :ways]
    keys = torch.rand(episodes, ways, int(count.max()), generator=gen)
    keys[torch.arange(keys.shape[2]) >= count[cls][..., None]] = float("inf")  # padding past a class's rows
    pick = torch.as_tensor(rows)[start[cls][..., None] + keys.argsort(-1)[..., :need]]
    return pick[..., :shots], pick[..., shots:]


def dirichlet_counts(ways: int, total: int, cap: int, alpha: float, episodes: int, seed: int) -> torch.Tensor:
    """Query counts (E, ways) per class, each row summing to `total`, proportions ~ Dirichlet(alpha).

    Proportions × total are rounded by largest remainder; an episode in which a class would get
    more than `cap` queries (its rows left after the support) is redrawn. Seeded by (seed, ways, total).
    """
    if cap * ways < total:
        raise InputError(None, f"{total} queries in {ways} classes of at most {cap} query rows each")
    rng = np.random.default_rng([seed, ways, total])
    out, todo = np.zeros((episodes, ways), np.int64), np.arange(episodes)
    while len(todo):
        raw = rng.dirichlet(np.full(ways, alpha), len(todo)) * total
        counts = np.floor(raw).astype(np.int64)
        first = np.argsort(np.argsort(counts - raw, axis=1), axis=1)  # 0 = largest remainder
        counts += first < (total - counts.sum(1))[:, None]
        ok = (counts <= cap).all(1)
        out[todo[ok]], todo = counts[ok], todo[~ok]
    return torch.from_numpy(out)


def draw_queries(cfg: EpisodesConfig, labels: np.ndarray, classes: np.ndarray, ways: int,
                 shots: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support (E, W, S) and query (E, W·Q) row indices, and each query's way (E, W·Q), per `cfg`."""
    total = ways * cfg.queries
    if cfg.query_dirichlet <= 0:
        sup, qry = draw_episodes(labels, classes, ways, shots, cfg.queries, cfg.episodes, cfg.seed)
        return sup, qry.flatten(1), torch.arange(ways).repeat_interleave(cfg.queries).expand(len(sup), -1)
    rows = np.bincount(labels, minlength=int(classes.max()) + 1)[classes]
    rows = rows[rows >= shots + cfg.queries]  # the classes draw_episodes may use
    cap = min(total, int(rows.min()) - shots) if len(rows) else cfg.queries
    counts = dirichlet_counts(ways, total, cap, cfg.query_dirichlet, cfg.episodes, cfg.seed)
    sup, pool = draw_episodes(labels, classes, ways, shots, cap, cfg.episodes, cfg.seed)
    keep = torch.arange(cap) < counts[..., None]  # (E, W, cap): the first counts[e, w] of each pool
    ways_of = torch.arange(ways)[:, None].expand_as(pool)
    return sup, pool[keep].reshape(len(sup), total), ways_of[keep].reshape(len(sup), total)


def episode_accuracies(name: str, params: Dict[str, Any], support: torch.Tensor, query: torch.Tensor,
                       task: Task, truth: Optional[torch.Tensor] = None,
                       scores_out: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
    """Accuracy (E,) of one head on episodes: support (E, W, S, d) and query (E, W, Q, d), or query
    (E, Q, d) with truth (E, Q), each query's way. A list `scores_out` receives the scores (E', Q, W) of
    consecutive chunks of episodes, for `lowshot.metrics.episode_calibration`."""
    e, w, s, d = support.shape
    if truth is None:
        truth = torch.arange(w, device=query.device).repeat_interleave(query.shape[2])
        query = query.reshape(e, -1, d)
    head = HEADS.create(name, **params)
    keep = scores_out.append if scores_out is not None else (lambda x: None)
    if hasattr(head, "episode_scores"):
        fast = getattr(head, "episode_predictions", None)
        predict = fast or (lambda *a: _kept(head.episode_scores(*a), keep).max(-1).indices)
        step = max(1, getattr(head, "episode_bytes", CHUNK_BYTES) // (4 * d * (w * s + query.shape[1])))
        guess = torch.cat([predict(support[i:i + step], query[i:i + step], task) for i in range(0, e, step)])
        if fast and scores_out is not None:  # the cheaper arg-max keeps no scores: compute them for calibration
            for i in range(0, e, step):
                keep(head.episode_scores(support[i:i + step], query[i:i + step], task))
    else:
        labels = torch.arange(w, device=support.device).repeat_interleave(s)
        guess = torch.stack([_kept(HEADS.create(name, **params).fit(support[i].reshape(-1, d), labels, task)
                                   .scores(query[i]), lambda x: keep(x[None])).argmax(-1) for i in range(e)])
    return (guess == truth).float().mean(-1)


def _kept(scores: torch.Tensor, keep) -> torch.Tensor:
    keep(scores)
    return scores


@dataclass
class EpisodeInputs:
    """What the episodes of a run are drawn from and scored on.

    Attributes:
        test: the test features (B's, for cross-domain features).
        novel: the setup's novel classes (the split the episodes draw from).
        base_mean: (d,) mean of the representation's base-class train rows (SimpleShot's centre), or None.
        request: what an episode file of these inputs records (data set, data, split, classes, labels digest).
        source: the data set the representation was trained on (A).
        trained_on: A's data tag (its name and the loader arguments that change its images).
    """

    test: FeatureSet
    novel: np.ndarray
    base_mean: Optional[torch.Tensor]
    request: Dict[str, Any]
    source: str
    trained_on: str


def _features_dir(cfg: EpisodesConfig) -> Path:
    """`features_dir`, else the run's features, else (`dataset` B given) its cross-domain features of B."""
    if cfg.features_dir:
        return Path(cfg.features_dir)
    run = RunFolder(Path(cfg.run))
    if cfg.dataset is None:
        return run.features
    folder = run.cross(data_tag(cfg.dataset, cfg.dataset_args)) / "features"
    if not folder.is_dir():
        raise InputError(folder, f"no cross-domain features of {cfg.dataset}: run `lowshot features --run {cfg.run} "
                                 f"--dataset {cfg.dataset}` with the same loader arguments first (for the run's own "
                                 "data set, leave dataset out)")
    return folder


def load_episode_inputs(cfg: EpisodesConfig) -> EpisodeInputs:
    """The test features, novel classes, centre and episode-file request of `cfg`, checked to belong together."""
    folder = _features_dir(cfg)
    test = read_features(test_features_path(folder, cfg.test_features))
    splits, spath = splits_for(test, cfg.splits)
    check_compatible(test, None, splits, spath)
    base, novel = splits.setup(cfg.setup)
    source = test.attrs.get("source_dataset")
    centre = _source_mean(cfg, test, source) if source else _base_mean(folder / "train.hdf5", test, base, splits, spath)
    request = {"dataset": data_key(test) or Path(spath).stem, "data": json.loads(test.attrs.get("dataset_args") or "{}"),
               "split": SPLITS[cfg.setup], "setup": cfg.setup,
               "classes_digest": digest([int(c) for c in novel]), "labels_digest": labels_digest(test.labels)}
    trained_on = data_tag(source, json.loads(test.attrs.get("source_dataset_args") or "{}")) if source else None
    return EpisodeInputs(test, novel, centre, request, source or request["dataset"],
                         trained_on or data_tag(request["dataset"], request["data"]))


def _load(cfg: EpisodesConfig):
    """Test features, the setup's novel classes and the mean (d,) of its base classes' train rows (or None)."""
    inputs = load_episode_inputs(cfg)
    return inputs.test, inputs.novel, inputs.base_mean


def _source_mean(cfg: EpisodesConfig, test: FeatureSet, source: str) -> Optional[torch.Tensor]:
    """Cross-domain: the mean of the representation's own base rows (data set A's, in `<run>/features`), never B's."""
    path = RunFolder(Path(cfg.run)).path("train_features")
    if not path.exists():
        return None
    splits, spath = splits_for(read_features(path))
    return _base_mean(path, test, splits.setup(cfg.setup)[0], splits, spath)


def _base_mean(path: Path, test: FeatureSet, base: np.ndarray, splits: LabelSplits,
               spath: Path) -> Optional[torch.Tensor]:
    """Mean (d,) of the base classes' rows of the train features (SimpleShot's centre); None without them."""
    if not path.exists():
        return None
    train = read_features(path)
    check_compatible(train, None, splits, spath)
    check_same_representation(train, test)
    feats, _ = rows_of(train, base)
    return torch.from_numpy(feats.mean(0, dtype=np.float64)).float() if len(feats) else None


def head_models(cfg: EpisodesConfig, heads: List[str], dim: int, device: torch.device,
                notes: Dict[str, str]) -> Dict[str, Any]:
    """The trained models of the heads that need one; a head that cannot run on episodes (it needs base rows)
    or whose model is missing gets a note in `notes` instead."""
    models = {}
    for name in heads:
        cls = HEADS.get(name)
        if getattr(cls, "episodic", None) is False:
            notes[name] = "skipped: needs base-class rows (or fine-tunes on them)"
        elif cls.artefact:
            try:
                models[name] = trained_model(cfg.run, cls, dim, device, cfg.models.get(cls.artefact))[0]
            except InputError as err:
                notes[name] = f"skipped: {err}"
    return models


def settings_of(cfg: EpisodesConfig) -> List[Setting]:
    """The named `settings`, else every (ways, shots) of `ways` × `shots` with `queries`, `episodes` and
    `query_dirichlet`."""
    if cfg.settings:
        return parse_settings(cfg.settings, cfg.queries, cfg.query_dirichlet)
    return [Setting(w, s, cfg.queries, cfg.episodes, cfg.query_dirichlet) for w in cfg.ways for s in cfg.shots]


def _drawer(cfg: EpisodesConfig, setting: Setting, inputs: EpisodeInputs):
    """The function that draws the episodes of `setting` for an episode file's request."""
    labels, novel = inputs.test.labels, inputs.novel

    def draw(meta: Dict[str, Any]) -> Episodes:
        if setting.sampler == "metadataset":
            return Episodes.from_list(draw_metadataset(labels, novel, setting.episodes, cfg.seed), meta)
        asked = dataclasses.replace(cfg, queries=setting.queries, episodes=setting.episodes,
                                    query_dirichlet=setting.query_dirichlet)
        return Episodes.from_dense(*draw_queries(asked, labels, novel, setting.ways, setting.shots), labels, meta)
    return draw


def episode_files(cfg: EpisodesConfig, inputs: EpisodeInputs) -> List[Tuple[Setting, Episodes]]:
    """Each setting with its episode file (read when it exists, else drawn and written), checked against the
    test features' rows; or the one `episode_file` given."""
    folder = Path(cfg.episodes_dir) if cfg.episodes_dir else shots_dir(inputs.request["dataset"]) / "episodes"
    if cfg.episode_file:
        ep = episode_file(folder, Setting(), cfg.seed, {}, None, cfg.episode_file)
        pairs = [(parse_settings([ep.meta["setting"]])[0], ep)]
    else:
        pairs = [(s, episode_file(folder, s, cfg.seed, inputs.request, _drawer(cfg, s, inputs)))
                 for s in settings_of(cfg)]
    for _, ep in pairs:
        check_rows(ep, inputs.test.labels, inputs.test.path)
    return pairs


def ragged_accuracies(name: str, params: Dict[str, Any], feats: torch.Tensor, ep: Episodes,
                      task: Task) -> torch.Tensor:
    """Accuracy (E,) of one head on variable episodes (any ways, per-class shots), fitted one episode at a time
    on its support rows of `feats` (N, d) and scored on its queries."""
    out = torch.empty(len(ep))
    for i in range(len(ep)):
        sup, sup_way, qry, qry_way = (torch.from_numpy(a).to(feats.device) for a in ep.episode(i))
        ways = int(ep.ways[i])
        t = dataclasses.replace(task, num_classes=ways, novel_classes=np.arange(ways))
        guess = HEADS.create(name, **params).fit(feats[sup], sup_way, t).scores(feats[qry]).argmax(-1)
        out[i] = (guess == qry_way).float().mean()
    return out


def _who(cfg: EpisodesConfig, name: str, inputs: EpisodeInputs) -> Dict[str, Any]:
    """What a result records of the head and the representation: run, head, options, transductive, A."""
    return {"representation": Path(cfg.run).name, "head": name, "head_params": cfg.head_params.get(name, {}),
            "transductive": bool(getattr(HEADS.get(name), "transductive", False)), "source_dataset": inputs.source,
            "trained_on": inputs.trained_on, "checkpoint_sha1": inputs.test.attrs.get("checkpoint_sha1")}


def score_file(cfg: EpisodesConfig, setting: Setting, ep: Episodes, feats: torch.Tensor, task: Task,
               models: Dict[str, Any], notes: Dict[str, str], inputs: EpisodeInputs) -> List[dict]:
    """Every head (not skipped in `notes`) on one episode file; each result is written under `out_dir`."""
    dense, fingerprint, records = ep.dense(), ep.fingerprint, []
    if dense is not None:
        sup, qry, truth = (t.to(feats.device) for t in dense)
        support, query = feats[sup], feats[qry]
    for name in [h for h in cfg.heads if h not in notes]:
        params, start = cfg.head_params.get(name, {}), time.perf_counter()
        t = dataclasses.replace(task, model=models.get(name), num_classes=setting.ways,
                                novel_classes=np.arange(setting.ways))
        scores: List[torch.Tensor] = []
        try:
            acc = (episode_accuracies(name, params, support, query, t, truth, scores) if dense is not None
                   else ragged_accuracies(name, params, feats, ep, t))
        except InputError as err:
            notes[name] = f"skipped: {err}"
            continue
        record = episode_report.make_record(_who(cfg, name, inputs), setting, ep, fingerprint, acc.cpu().numpy(),
                                            time.perf_counter() - start)
        record.update(episode_calibration(torch.cat(scores), truth) if scores else {})
        label = name + ("-" + digest(params)[:8] if params else "")
        episode_report.write_result(episode_report.result_path(_out_dir(cfg), record["key"], label), record)
        records.append(record)
    return records


def episodes(cfg: EpisodesConfig) -> str:
    """Score every head on the episode file of every setting; write <out_dir>/episodes.{csv,md} and the
    per-episode results (<out_dir>/per_episode/); return the markdown."""
    for name in cfg.heads:
        HEADS.get(name)
    inputs = load_episode_inputs(cfg)
    device = pick_device(cfg.device)
    feats = torch.from_numpy(np.ascontiguousarray(inputs.test.feats)).to(device)
    base_mean = inputs.base_mean.to(device) if inputs.base_mean is not None else None
    notes: Dict[str, str] = {}
    models = head_models(cfg, cfg.heads, inputs.test.dim, device, notes)
    task = Task(0, np.zeros(0, np.int64), np.zeros(0, np.int64), None, inputs.test.classifier_scale, seed=cfg.seed,
                device=device, base_mean=base_mean)
    files, records = episode_files(cfg, inputs), []
    announce([h for h in cfg.heads if h not in notes], sum(len(ep) for _, ep in files))
    global _SCORING
    _SCORING = (cfg, feats, task, models, dict(notes), inputs)
    try:
        with progress(total=len(files), desc="episode settings", unit="setting") as bar:
            for found, skipped in forked_map(_score_one, files, _jobs(cfg, device, len(files))):
                records += found
                notes.update(skipped)
                bar.update()
    finally:
        _SCORING = None
    return _write(cfg, records, notes)


_SCORING: Any = None  # what a forked process scoring one episode file inherits


def _score_one(file: Tuple[Setting, Episodes]) -> Tuple[List[dict], Dict[str, str]]:
    cfg, feats, task, models, notes, inputs = _SCORING
    notes = dict(notes)
    return score_file(cfg, *file, feats, task, models, notes, inputs), notes


def _jobs(cfg: EpisodesConfig, device: torch.device, files: int) -> int:
    """Processes scoring episode files: `cfg.jobs`, else on a CPU the CPUs the process may use over its threads."""
    if cfg.jobs:
        return max(1, min(cfg.jobs, files))
    return 1 if device.type != "cpu" else max(1, min(available_cpus() // torch.get_num_threads(), files))


def _out_dir(cfg: EpisodesConfig) -> Path:
    """`out_dir`, else `<run>/episodes` (cross-domain: `<run>/cross/<B>/episodes`)."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    run = RunFolder(Path(cfg.run))
    return run.cross(data_tag(cfg.dataset, cfg.dataset_args)) / "episodes" if cfg.dataset else run.path("episodes")


def _write(cfg: EpisodesConfig, records: List[dict], notes: Dict[str, str]) -> str:
    """Long CSV and markdown tables (one per episode file, naming it and its fingerprint), both atomic."""
    out = _out_dir(cfg)
    episode_report.write_csv(out / "episodes.csv", records)
    text = episode_report.tables(records) if records else ""
    text += "".join(f"\n- {h}: {why}" for h, why in notes.items()) + ("\n" if notes else "")
    with atomic_path(out / "episodes.md") as tmp:
        tmp.write_text(text)
    return text
