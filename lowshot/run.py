"""The run folder and the benchmark files around it: the one owner of their layout.

    runs/<name>/                      one representation and everything derived from it
      checkpoints/{<epoch>,last}.pt   train
      features/{train,test}.hdf5      features (an H&G folder's val.hdf5 is read as the test file)
      generator/generator.pt          generate (+ cache/)
      heads/<model>.pt                train-matching, train-weight-generator, train-pmn
      results/*.json                  benchmark
      episodes/episodes.{csv,md}      episodes
      gfsl/gfsl.{csv,md}              gfsl
      incremental/setup<k>/           incremental
      fscil/<protocol>/               fscil
      cross/<data tag>/features/test.hdf5   features of another data set B (`lowshot features --dataset B`)
      cross/<data tag>/episodes/      episodes on B's test classes (`lowshot episodes --dataset B`)
      report/                         report
    runs/<name>-seed<k>/              seed k of a recipe trained with several seeds (`--seeds`): one run folder each
    label_splits/<dataset>.json       which classes are base and novel (H&G label_idx.json)
    experiment_cfgs/<dataset>/        splitfile_{1..5}.json: the shots of each experiment
      episodes/*.npz                  fixed episode files, shared by every run of the data set

`ARTEFACTS` names each file or folder a stage reads or writes (`lowshot.stages.STAGES` says which
stage makes which). Every stage reads its feature inputs through `load_inputs`, so the defaults,
the checks that the files belong together and the error messages exist once.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lowshot.errors import InputError
from lowshot.io.checkpoints import load_checkpoint, model_digest
from lowshot.io.features import FeatureSet, read_features
from lowshot.io.splits import (
    SHOTS_DATA,
    LabelSplits,
    check_same_data,
    load_label_splits,
    shots_data,
)
from lowshot.stages import maker

NO_DATASET = ("records no data set: pass --set splits=<label split file> "
              "and, to benchmark, --set shots_dir=<folder of splitfile_k.json>")

# artefact -> its place in a run folder
ARTEFACTS: Dict[str, str] = {
    "checkpoint": "checkpoints/last.pt",
    "train_features": "features/train.hdf5",
    "test_features": "features/test.hdf5",
    "generator": "generator/generator.pt",
    "matching": "heads/matching.pt",
    "weight_generator": "heads/weight_generator.pt",
    "pmn": "heads/pmn_hallucinator.pt",
    "results": "results",
    "episodes": "episodes",
    "gfsl": "gfsl",
    "incremental": "incremental",
    "fscil": "fscil",
    "report": "report",
}


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    def path(self, artefact: str) -> Path:
        """Where `artefact` (a key of `ARTEFACTS`) lies in this run folder."""
        return self.root / ARTEFACTS[artefact]

    def cross(self, tag: str) -> Path:
        """The folder of cross-domain outputs on data set B (`lowshot.data.cross.data_tag`): features, episodes."""
        return self.root / "cross" / tag

    @property
    def checkpoints(self) -> Path:
        return self.path("checkpoint").parent

    @property
    def features(self) -> Path:
        return self.path("train_features").parent


def run_dir(name_or_path: str) -> str:
    """A bare run name means `runs/<name>`; anything with a slash is a path."""
    return name_or_path if os.sep in name_or_path else os.path.join("runs", name_or_path)


def seed_run(run: str, seed: int | str) -> str:
    """The run folder of training seed `seed` of the recipe `run` (`--seeds`): a sibling, `<run>-seed<k>`."""
    return f"{os.path.normpath(run)}-seed{seed}"


def split_seed_run(name: str) -> Tuple[str, Optional[int]]:
    """A run folder's name as (recipe, training seed): `demo-seed2` -> ("demo", 2); `demo` -> ("demo", None)."""
    m = re.fullmatch(r"(.+)-seed(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, None)


# config fields that name one run folder's own files: with several seeds they would be shared, so must stay unset
PER_RUN_PATHS = ("out_dir", "out", "checkpoint", "features_dir", "test_features", "generator_file", "models")


def run_seeds(name: str, cfg: Any, seeds: List[int]) -> Any:
    """Run stage `name` once per training seed k, on `<run>-seed<k>` with seed k (`lowshot.run.seed_run`).

    Returns the stage's outputs joined: lists concatenated, anything else one line per seed.
    """
    from lowshot.stages import run
    defaults = type(cfg)()
    for f in PER_RUN_PATHS:
        if hasattr(cfg, f) and getattr(cfg, f) != getattr(defaults, f):
            raise InputError(None, f"--seeds: {f} would be shared by every seed's run folder; leave it unset")
    outputs = [run(name, dataclasses.replace(cfg, run=seed_run(cfg.run, k), seed=k)) for k in seeds]
    if all(isinstance(o, list) for o in outputs):
        return [x for o in outputs for x in o]
    return "\n".join(str(o) for o in outputs)


def splits_path(dataset: Optional[str], explicit: Optional[str] = None) -> Path:
    """`explicit`, else `label_splits/<dataset>.json`."""
    return Path(explicit) if explicit else Path("label_splits") / f"{dataset}.json"


def shots_dir(dataset: Optional[str], explicit: Optional[str] = None) -> Path:
    """`explicit`, else `experiment_cfgs/<dataset>`."""
    return Path(explicit) if explicit else Path("experiment_cfgs") / str(dataset)


def test_features_path(features_dir: Path, explicit: Optional[str] = None) -> Path:
    """`explicit`, else `test.hdf5`, else H&G's `val.hdf5` when only that one exists."""
    if explicit:
        return Path(explicit)
    test, val = features_dir / "test.hdf5", features_dir / "val.hdf5"
    return val if val.exists() and not test.exists() else test


@dataclass
class RunInputs:
    """What a feature-consuming stage reads: features, label splits, and where the shot files are."""

    train: FeatureSet
    test: Optional[FeatureSet]
    splits: LabelSplits
    splits_path: Path
    shots_dir: Path


def load_inputs(run: str, features_dir: Optional[str] = None, splits: Optional[str] = None,
                shots: Optional[str] = None, test_features: Optional[str] = None,
                need_test: bool = True, lazy: bool = False) -> RunInputs:
    """Read the train (and test) features and the label splits of a run, checked to belong together.

    Args:
        run: the run folder; `features_dir` defaults to `<run>/features`.
        splits, shots: explicit label split file and shot folder (default: from the data set the
            train file records).
        test_features: explicit test feature file (default: `test.hdf5`, or `val.hdf5`).
        need_test: read the test file too.
        lazy: leave the features on disk and read only the rows a stage indexes (`FeatureRows`).
    """
    fdir = Path(features_dir) if features_dir else RunFolder(Path(run)).features
    train = read_features(fdir / "train.hdf5", lazy)
    test = read_features(test_features_path(fdir, test_features), lazy) if need_test else None
    if not data_key(train) and need_test and shots is None:
        raise InputError(train.path, NO_DATASET)
    label_splits, spath = splits_for(train, splits)
    check_compatible(train, test, label_splits, spath)
    sdir = shots_dir(data_key(train), shots)
    if need_test:
        check_same_data(sdir / SHOTS_DATA, shots_data(sdir), train.attrs.get("data_fingerprint"), train.path)
    return RunInputs(train, test, label_splits, spath, sdir)


def data_key(fs: FeatureSet) -> Optional[str]:
    """The key of the data a feature file was made from (its split files' name), or None when it records none."""
    return fs.attrs.get("data_key") or fs.attrs.get("dataset")


def splits_for(fs: FeatureSet, explicit: Optional[str] = None) -> Tuple[LabelSplits, Path]:
    """The label split of the data `fs` was made from (`explicit`, else `label_splits/<key>.json`), checked to
    describe that data; an `InputError` when neither is known."""
    if not explicit and not data_key(fs):
        raise InputError(fs.path, NO_DATASET)
    path = splits_path(data_key(fs), explicit)
    splits = load_label_splits(path)
    check_same_data(path, splits.data, fs.attrs.get("data_fingerprint"), fs.path)
    return splits, path


def check_compatible(train: FeatureSet, test: Optional[FeatureSet], splits: LabelSplits, spath: Path) -> None:
    """Same dimension and checkpoint for both files, every label inside the split file's label space."""
    for fs in (train, test) if test is not None else (train,):
        if len(fs.labels) and fs.labels.max() >= splits.num_classes:
            raise InputError(fs.path, f"label {fs.labels.max()} is outside the label space of {spath} "
                                      f"({splits.num_classes} classes)")
    if test is not None:
        check_same_representation(train, test)


def check_same_representation(train: FeatureSet, test: FeatureSet) -> None:
    """Same dimension and, when both record one, the same checkpoint."""
    if test.dim != train.dim:
        raise InputError(test.path, f"feature dimension {test.dim} does not match {train.path} ({train.dim})")
    a, b = train.attrs.get("checkpoint_sha1"), test.attrs.get("checkpoint_sha1")
    if a and b and a != b:
        raise InputError(test.path, f"was extracted from checkpoint {b}, {train.path} from {a}: "
                                    "re-run `lowshot features` so both come from one checkpoint")


def base_train_rows(run: str, features_dir: Optional[str] = None,
                    splits: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, FeatureSet]:
    """The base classes' train rows of a run, for the stages that train on them: features (N, d),
    labels (N,) and the train `FeatureSet`; an `InputError` when the file has none."""
    inputs = load_inputs(run, features_dir, splits, need_test=False)
    feats, labels = rows_of(inputs.train, inputs.splits.base_classes)
    if not len(labels):
        raise InputError(inputs.train.path, "has no rows of the base classes")
    return feats, labels, inputs.train


def rows_of(fs: FeatureSet, classes: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """The rows of `fs` whose label is in `classes`: features (n, d) contiguous and labels (n,).

    Features left on disk (`read_features(..., lazy=True)`) are read for those rows only.
    """
    keep = np.isin(fs.labels, np.asarray(classes))
    return np.ascontiguousarray(fs.feats[keep]), fs.labels[keep]


def read_artefact(run: str, artefact: str, explicit: Optional[str] = None) -> Tuple[dict, str, Path]:
    """A trained model's file as its stage saved it (read with `weights_only=True`), its `model_digest` and path:
    `explicit`, else the run folder's; a missing file is one line naming the stage that makes it."""
    path = Path(explicit) if explicit else RunFolder(Path(run)).path(artefact)
    saved = load_checkpoint(path, f"not found: run `lowshot {maker(artefact)} --run {run}` first", f"the {artefact} model")
    return saved, model_digest(saved), path


def trained_model(run: str, head_class, dim: int, device, explicit: Optional[str] = None) -> Tuple[Any, str]:
    """The trained model a head class needs (`head_class.artefact`), built by its `build_model` for `dim`-dimensional
    features, on `device` in eval mode, and its file's digest."""
    saved, key, _ = read_artefact(run, head_class.artefact, explicit)
    return head_class.build_model(saved, dim).to(device).eval(), key
