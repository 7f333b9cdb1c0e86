"""The pipeline as data: one entry per stage.

    data ─► train ─► features ─► generate, train-matching, train-weight-generator, train-pmn
                         │                              │
                         └──────────► benchmark ◄───────┘ ─► report
                                      episodes, gfsl, incremental, fscil (side protocols)

Each `Stage` names its command (`lowshot <name>`, `make <name>`, one SLURM job), its config class
and function (imported when first used, so the CLI starts without torch), and the run-folder
artefacts (`lowshot.run.ARTEFACTS`) it reads and writes. Which stage a stage follows is derived:
it follows the stages that write what it reads. A stage with `model_reads` also reads the trained
models of the heads and generator it is given (`lowshot.heads.Head.artefact`). The CLI commands,
`lowshot slurm`'s job graph and the Makefile's targets come from this table or are checked
against it (tests/test_stages.py).
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple


@dataclass(frozen=True)
class Stage:
    """One pipeline stage. `run` and `config` are "module:name"; `trainer` ("module:function") is the pure
    training function a model-training stage (`lowshot.stages.train_model`) runs on the base rows."""

    name: str
    config: str
    run: str
    reads: Tuple[str, ...]
    writes: Tuple[str, ...]
    help: str
    trainer: Optional[str] = None
    model_reads: bool = False
    gpu: bool = True  # computes on a GPU when there is one (SLURM jobs ask for one on GPU partitions)
    small_ops: bool = True  # many small tensor operations: one CPU thread per process (lowshot.runtime.set_threads)
    job: bool = True  # a SLURM job of `lowshot slurm` (`data` runs once per data set, before)

    def config_class(self) -> type:
        return _attr(self.config)

    def function(self) -> Callable[[Any], Any]:
        """The stage's function of its config (a model-training stage's is `run` with this stage bound first)."""
        run = _attr(self.run)
        return functools.partial(run, self) if self.trainer else run

    def fit(self) -> Callable[..., Any]:
        """A model-training stage's pure training function."""
        return _attr(self.trainer)


def _attr(spec: str) -> Any:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _model_stage(name: str, package: str, config: str, artefact: str, what: str) -> Stage:
    return Stage(name, f"lowshot.heads.{package}.train:{config}", "lowshot.stages.train_model:train_model",
                 ("train_features",), (artefact,), f"Train {what} on the run's base-class features (<run>/heads/).",
                 trainer=f"lowshot.heads.{package}.train:fit")


STAGES: Tuple[Stage, ...] = (
    Stage("data", "lowshot.stages.data:DataConfig", "lowshot.stages.data:prepare_data", (), (),
          "Make a data set available; write its label split and shot files when missing.", gpu=False, job=False),
    Stage("train", "lowshot.stages.train:TrainConfig", "lowshot.stages.train:train", (), ("checkpoint",),
          "Train a representation on the base classes (resumes from <run>/checkpoints/last.pt); torchrun for several GPUs.",
          small_ops=False),
    Stage("features", "lowshot.stages.features:FeaturesConfig", "lowshot.stages.features:features", ("checkpoint",),
          ("train_features", "test_features"),
          "Cache penultimate features of every train and test image in <run>/features/{train,test}.hdf5.",
          small_ops=False),
    Stage("generate", "lowshot.stages.generate:GenerateConfig", "lowshot.stages.generate:generate",
          ("train_features",), ("generator",),
          "Train the analogy-based feature generator on base-class features (<run>/generator/)."),
    _model_stage("train-matching", "matching", "MatchingTrainConfig", "matching", "the matching network"),
    _model_stage("train-weight-generator", "weight_generator", "WeightGeneratorTrainConfig", "weight_generator",
                 "Gidaris & Komodakis' few-shot weight generator"),
    _model_stage("train-pmn", "pmn_hallucinator", "PMNTrainConfig", "pmn",
                 "prototype matching networks + hallucinator (Wang et al.)"),
    Stage("benchmark", "lowshot.stages.benchmark:BenchmarkConfig", "lowshot.stages.benchmark:benchmark",
          ("train_features", "test_features"), ("results",),
          "Run the low-shot grid: one result JSON per (head, n, experiment) under <run>/results/.", model_reads=True),
    Stage("episodes", "lowshot.protocols.episodes:EpisodesConfig", "lowshot.protocols.episodes:episodes",
          ("train_features", "test_features"), ("episodes",),
          "Episodic N-way K-shot (or Meta-Dataset) evaluation on novel-class test features from fixed episode files "
          "(experiment_cfgs/<dataset>/episodes/), per-episode results for paired reports (mean ± 95 % interval).",
          model_reads=True),
    Stage("gfsl", "lowshot.protocols.gfsl:GFSLConfig", "lowshot.protocols.gfsl:gfsl",
          ("train_features", "test_features"), ("gfsl",),
          "Generalised few-shot episodes (Gidaris & Komodakis): novel classes beside every base class; novel, "
          "base and both accuracies.", model_reads=True),
    Stage("incremental", "lowshot.protocols.incremental:IncrementalConfig", "lowshot.protocols.incremental:incremental",
          ("checkpoint",), ("incremental",),
          'N base classes + 1 new class (the fair "40 + 1" protocol): one CSV row per (method, n, class, draw).',
          small_ops=False),
    Stage("fscil", "lowshot.protocols.fscil:FSCILConfig", "lowshot.protocols.fscil:fscil",
          ("train_features", "test_features", "generator"), ("fscil",),
          "Few-shot class-incremental sessions (a base session, then N-way K-shot sessions): per-session accuracy "
          "of incremental learners with intervals."),
    Stage("report", "lowshot.stages.report:ReportConfig", "lowshot.stages.report:report", ("results",), ("report",),
          "Tables (markdown on stdout, CSV files) and a plot from result folders.", gpu=False),
)

BY_NAME: Dict[str, Stage] = {s.name: s for s in STAGES}


def makers(artefacts: Tuple[str, ...]) -> List[str]:
    """The stages that write any of `artefacts`, in pipeline order."""
    return [s.name for s in STAGES if set(s.writes) & set(artefacts)]


def follows(stage: Stage, extra_reads: Tuple[str, ...] = ()) -> List[str]:
    """The stages whose outputs `stage` reads (plus `extra_reads`, e.g. its heads' trained models)."""
    return makers(stage.reads + tuple(extra_reads))


def maker(artefact: str) -> str:
    """The stage that writes `artefact`."""
    return makers((artefact,))[0]


def run(name: str, cfg) -> Any:
    """Run stage `name` on its config `cfg` (an instance of its config class), as `lowshot <name>` does."""
    return BY_NAME[name].function()(cfg)
