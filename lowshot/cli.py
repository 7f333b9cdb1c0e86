"""The `lowshot` command: one thin command per stage of `lowshot.stages.STAGES`; the stages do the work.

Every stage command takes `--config FILE.json` and repeated `--set key=value` on top of its flags:
dataclass defaults < config file < --set < flags, each value converted to its field's type. Its help
text, config class and function come from the stage table. Component choices (`--heads`,
`--backbone`, ...) are read from the registries.
"""
from __future__ import annotations

import functools
import json
import os

import click

from lowshot.errors import InputError, os_error
from lowshot.stages import STAGES

# OpenMP threads wait for work passively: spinning, they collapse 10x when another process shares the cores
# (docs/speed.md). Set before torch is imported, which the commands do.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class Group(click.Group):
    """Bad input, and any file-system error (read-only folder, full disk, permission denied, missing parent),
    becomes one `Error: <file>: <problem>` line and exit status 1, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InputError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            raise click.ClickException(str(os_error(e))) from None


class RegistryChoice(click.Choice):
    """A choice among a registry's names, read from the registry when first needed.

    `many=True` takes a comma-separated list (or `all`) and returns a list of names; with
    `keep_all=True`, `all` stays `["all"]` for the stage to expand (to what can run on its inputs).
    An unknown name is the registry's own one-line error, which lists the valid choices.
    """

    def __init__(self, module: str, attr: str, many: bool = False, keep_all: bool = False):
        self._where, self.many, self.keep_all, self.case_sensitive = (module, attr), many, keep_all, True

    def registry(self):
        import importlib
        return getattr(importlib.import_module(self._where[0]), self._where[1])

    @property
    def choices(self):
        return tuple(self.registry().names())

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        if self.many and self.keep_all and value == "all":
            return ["all"]
        names = list(self.choices) if self.many and value == "all" else (
            [v.strip() for v in value.split(",") if v.strip()] if self.many else [value])
        for name in names:
            try:
                self.registry().get(name)
            except InputError as e:
                raise click.ClickException(str(e)) from None
        return names if self.many else names[0]

    def get_metavar(self, param, ctx=None):
        return "[" + "|".join(self.choices) + "]" + (",... | all" if self.many else "")


def _overrides(sets) -> dict:
    """`--set key=value` items as {key: raw text}; the config layer converts each to its field's type."""
    out = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--set")
        out[key.replace("-", "_")] = value
    return out


def _json_object(ctx, param, value):
    """A JSON object option as a dict."""
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise click.BadParameter("must be a JSON object, e.g. '{\"root\": \"data/cub\"}'")
    return obj


def _int_list(ctx, param, value):
    """'1,2,5' -> [1, 2, 5]; None stays None (the config's value or default applies)."""
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


def common(f):
    """--config, --set, --seed and --device, shared by the stage commands."""
    f = click.option("--device", default=None, help="auto (GPU if present), cpu, cuda, cuda:1 ... [default: auto]")(f)
    f = click.option("--seed", type=int, default=None, help="Seed recorded in every output [default: 0].")(f)
    f = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config field.")(f)
    return click.option("--config", type=click.Path(dir_okay=False), default=None, help="JSON config file.")(f)


def run_stage(name: str, config, sets, adjust=None, **flags):
    """Resolve stage `name`'s config (defaults < `config` file < `sets` < non-None `flags`), let `adjust(cfg)`
    change it, run the stage; returns what the stage returns."""
    from lowshot.config import resolve_config
    from lowshot.runtime import set_threads
    from lowshot.stages import BY_NAME
    from lowshot.run import run_seeds
    stage = BY_NAME[name]
    cfg = resolve_config(stage.config_class(), config, _overrides(sets), **flags)
    if adjust:
        adjust(cfg)
    set_threads(int(os.environ.get("LOWSHOT_THREADS", 0)) or None, stage.small_ops)
    seeds = click.get_current_context().meta.get("lowshot.seeds") if click.get_current_context(silent=True) else None
    if seeds and flags.get("seed") is not None:
        raise InputError(None, "give --seed or --seeds, not both")
    return run_seeds(name, cfg, seeds) if seeds else stage.function()(cfg)


def stage_command(name: str, **settings):
    """Register the decorated function as `lowshot <name>`, with the stage table's help text; a command with
    `--run` also takes `--seeds` (`run_stage` then runs the stage once per seed's run folder)."""
    from lowshot.stages import BY_NAME

    def register(f):
        if any(p.name == "run" for p in getattr(f, "__click_params__", ())):
            f = click.option("--seeds", callback=_seeds_option, expose_value=False, default=None, metavar="K,K,...",
                             help="Training seeds: run once per seed, in <run>-seed<k> with --seed k.")(f)
        return main.command(name, help=BY_NAME[name].help, **settings)(f)
    return register


def _seeds_option(ctx, param, value):
    """`--seeds 0,1,2` -> kept in the context for `run_stage`."""
    ctx.meta["lowshot.seeds"] = _int_list(ctx, param, value)
    return ctx.meta["lowshot.seeds"]


def with_root(root):
    """An `adjust` that sets `dataset_args.root` (the `--root` flag) on top of the config's dataset_args."""
    def adjust(cfg):
        cfg.dataset_args = {**cfg.dataset_args, **({"root": root} if root else {})}
    return adjust


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="lowshot")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars on stderr [default: on a terminal only, not in logs].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op CPU threads per process [default: 1 for heads and small fits, every CPU the process "
                   "may use for training and features].")
@click.pass_context
def main(ctx, progress, threads):
    """Low-shot recognition benchmark: data → train → features → [generate] → benchmark → report."""
    settings = {"LOWSHOT_PROGRESS": None if progress is None else "1" if progress else "0",
                "LOWSHOT_THREADS": None if threads is None else str(threads)}
    for name, value in settings.items():  # for this command and the processes it starts; restored after it
        if value is not None:
            ctx.call_on_close(functools.partial(_restore, name, os.environ.get(name)))
            os.environ[name] = value


def _restore(name: str, value) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@stage_command("data")
@click.option("--dataset", default="glyphs", type=RegistryChoice("lowshot.data", "DATASETS"))
@click.option("--root", default=None, help="Folder of an on-disk data set (imagenet, folder, cub, cifar100).")
@click.option("--dataset-args", default="{}", callback=_json_object, help="JSON keyword arguments of the data set loader.")
@click.option("--seed", type=int, default=0)
@click.option("--force", is_flag=True, help="Rewrite split and shot files that exist.")
@click.option("--verify", is_flag=True, help="Decode every image first (in parallel) and list all that fail.")
def data(dataset, root, dataset_args, seed, force, verify):
    for path in run_stage("data", None, (), with_root(root), dataset=dataset, dataset_args=dataset_args, seed=seed,
                          force=force, verify=verify):
        click.echo(f"wrote {path}")


@stage_command("train")
@click.option("--run", default=None, help="Run folder (or name under runs/).")
@click.option("--backbone", default=None, type=RegistryChoice("lowshot.backbones", "BACKBONES"))
@click.option("--classifier", default=None, type=RegistryChoice("lowshot.backbones", "CLASSIFIERS"))
@click.option("--aux-loss", default=None, type=RegistryChoice("lowshot.losses", "AUX_LOSSES"))
@click.option("--aux-weight", type=float, default=None)
@click.option("--objective", default=None, type=RegistryChoice("lowshot.objectives", "OBJECTIVES"),
              help="Training objective; its options: --set objective_args='{...}' [default: ce].")
@click.option("--epochs", type=int, default=None)
@click.option("--dataset", default=None, type=RegistryChoice("lowshot.data", "DATASETS"))
@click.option("--root", default=None, help="Folder of an on-disk data set (sets dataset_args.root).")
@click.option("--workers", type=int, default=None, help="Decoding processes per training process [default: auto].")
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default=None, help="Mixed precision [default: off].")
@common
def train(run, backbone, classifier, aux_loss, aux_weight, objective, epochs, dataset, root, workers, amp, config, sets,
          seed, device):
    from lowshot.run import run_dir
    path = run_stage("train", config, sets, with_root(root), run=run and run_dir(run), backbone=backbone,
                     classifier=classifier, aux_loss=aux_loss, aux_weight=aux_weight, objective=objective,
                     epochs=epochs, dataset=dataset, workers=workers, amp=amp, seed=seed, device=device)
    click.echo(f"checkpoint: {path}")


@stage_command("features")
@click.option("--run", default=None, help="Run folder (or name under runs/).")
@click.option("--checkpoint", default=None, help="[default: <run>/checkpoints/last.pt]")
@click.option("--backbone", default=None, metavar="timm:NAME|torchvision:NAME", help="An external model instead of a checkpoint.")
@click.option("--weights", default=None, help="Its local weights file (.safetensors or a torch.save state dict).")
@click.option("--random-init", is_flag=True, default=None, help="Its random initialisation instead of a weights file.")
@click.option("--dataset", default=None, type=RegistryChoice("lowshot.data", "DATASETS"),
              help="For --backbone [default: glyphs]; with a checkpoint, another data set B than its own: B's test "
                   "features in <run>/cross/<B>/ (cross-domain).")
@click.option("--root", default=None, help="Folder of an on-disk data set (sets dataset_args.root).")
@click.option("--force", is_flag=True, default=None)
@click.option("--workers", type=int, default=None, help="Decoding processes per extraction process [default: auto].")
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default=None, help="Mixed precision [default: off].")
@common
def features(run, checkpoint, backbone, weights, random_init, dataset, root, force, workers, amp, config, sets, seed,
             device):
    from lowshot.run import run_dir
    run_stage("features", config, sets, with_root(root), run=run and run_dir(run), checkpoint=checkpoint,
              backbone=backbone, weights=weights, random_init=random_init, dataset=dataset, force=force,
              workers=workers, amp=amp, seed=seed, device=device)


# The stages that train a model on a run's cached base-class features: `generate` and every stage of the table
# with a trainer (they take no flags of their own)
FEATURE_STAGES = ("generate",) + tuple(s.name for s in STAGES if s.trainer)


def _features_stage_command(name: str) -> None:
    """Register `lowshot NAME`: resolve the stage's config, run it, print what it wrote."""
    def command(run, force, config, sets, seed, device):
        from lowshot.run import run_dir
        path = run_stage(name, config, sets, run=run and run_dir(run), force=force, seed=seed, device=device)
        click.echo(f"{name}: {path}")

    options = [click.option("--run", default=None, help="Run folder (or name under runs/)."),
               click.option("--force", is_flag=True, default=None), common]
    for option in reversed(options):
        command = option(command)
    stage_command(name)(command)


for _name in FEATURE_STAGES:
    _features_stage_command(_name)


@stage_command("benchmark")
@click.option("--run", default=None, help="Run folder (or name under runs/).")
@click.option("--heads", default=None, type=RegistryChoice("lowshot.heads", "HEADS", many=True, keep_all=True),
              help="Comma-separated head names, or 'all' (every head these inputs allow) [default: logreg].")
@click.option("--n", "ns", default=None, callback=_int_list, help="Comma-separated shot counts [default: 1,2,5,10,20].")
@click.option("--expid", default=None, callback=_int_list,
              help="Experiment ids, comma-separated [default: $SLURM_ARRAY_TASK_ID or 1-5].")
@click.option("--setup", type=click.Choice(["1", "2"]), default=None, help="1 = validation, 2 = test [default: 2].")
@click.option("--test-features", default=None, help="Test feature file [default: <run>/features/test.hdf5, else val.hdf5].")
@click.option("--solver", default=None, help="logreg solver: lbfgs (fast, default) | hg (H&G's SGD schedule).")
@click.option("--generator", default=None, type=RegistryChoice("lowshot.generators", "GENERATORS"))
@click.option("--max-per-label", type=int, default=None, help="Generate up to M examples per novel class.")
@click.option("--force", is_flag=True, default=None, help="Recompute cells that have results.")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Processes computing cells [default: the CPUs the process may use, on a CPU; 1 on a GPU].")
@common
def benchmark(run, heads, ns, expid, setup, test_features, solver, generator, max_per_label, force, jobs, config, sets,
              seed, device):
    from lowshot.run import run_dir

    def with_solver(cfg):
        if solver:
            cfg.head_params.setdefault("logreg", {})["solver"] = solver

    written = run_stage("benchmark", config, sets, with_solver, run=run and run_dir(run), heads=heads, ns=ns,
                        expids=expid, test_features=test_features, setup=setup and int(setup), generator=generator,
                        max_per_label=max_per_label, force=force, jobs=jobs, seed=seed, device=device)
    click.echo(f"{len(written)} new result files")


@stage_command("episodes")
@click.option("--run", default=None, help="Run folder (or name under runs/).")
@click.option("--settings", default=None, help="Comma-separated episode settings: standard, standard-2000, "
              "standard-10000, 5w1s15q-600, md-600 [default: ways × shots].")
@click.option("--dataset", default=None, type=RegistryChoice("lowshot.data", "DATASETS"),
              help="Cross-domain: the data set B of `lowshot features --dataset B` (and its --set dataset_args).")
@common
def episodes(run, settings, dataset, config, sets, seed, device):
    from lowshot.run import run_dir
    click.echo(run_stage("episodes", config, sets, run=run and run_dir(run), seed=seed, device=device,
                         settings=settings and [s.strip() for s in settings.split(",") if s.strip()], dataset=dataset))


@stage_command("gfsl")
@click.option("--run", default=None, help="Run folder (or name under runs/).")
@common
def gfsl(run, config, sets, seed, device):
    from lowshot.run import run_dir
    click.echo(run_stage("gfsl", config, sets, run=run and run_dir(run), seed=seed, device=device))


@main.command("add-class")
@click.option("--checkpoint", default=None, help="A cosine-classifier checkpoint (lowshot train or add-class).")
@click.option("--name", default=None, help="Name of the new class.")
@click.option("--images", default=None, help="Folder of its images.")
@click.option("--fine-tune", is_flag=True, default=None, help="Then fine-tune the last layer on the run's cached base features.")
@click.option("--features", default=None, help="Those features [default: <run>/features/train.hdf5].")
@click.option("-o", "--out", default=None, help="The new checkpoint.")
@click.option("--force", is_flag=True, default=None, help="Replace an existing output.")
@common
def add_class(checkpoint, name, images, fine_tune, features, out, force, config, sets, seed, device):
    """Imprint a new class (Qi et al.) into a trained cosine-classifier model; write a new checkpoint."""
    from lowshot.config import resolve_config
    from lowshot.protocols.addclass import AddClassConfig
    from lowshot.protocols.addclass import add_class as add_class_stage
    cfg = resolve_config(AddClassConfig, config, _overrides(sets), checkpoint=checkpoint, name=name, images=images, fine_tune=fine_tune,
                   features=features, out=out, force=force, seed=seed, device=device)
    for option, value in (("--checkpoint", cfg.checkpoint), ("--name", cfg.name), ("--images", cfg.images),
                          ("-o", cfg.out)):
        if not value:
            raise click.UsageError(f"{option} is required")
    add_class_stage(cfg)


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--checkpoint", required=True, help="A checkpoint of lowshot train or add-class.")
@click.option("--top-k", type=int, default=5, show_default=True)
@click.option("--csv", "as_csv", is_flag=True, help="CSV (image,rank,class,probability) instead of text.")
@click.option("--device", default="auto", show_default=True)
def predict(images, checkpoint, top_k, as_csv, device):
    """Top-k classes with probabilities for each IMAGE (files or folders)."""
    from lowshot.protocols.addclass import predict as predict_stage
    rows = predict_stage(checkpoint, images, top_k, device)
    if as_csv:
        import csv
        import sys
        writer = csv.DictWriter(sys.stdout, ["image", "rank", "class", "probability"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({**r, "probability": f"{r['probability']:.6f}"} for r in rows)
        return
    for r in rows:
        click.echo(f"{r['image']}\t{r['rank']}\t{r['probability']:.4f}\t{r['class']}")


@stage_command("report")
@click.argument("results", nargs=-1)
@click.option("--out", "out_dir", default=None, help="Folder for CSVs and the plot [default: <results>/../report].")
@click.option("--compare", nargs=2, default=None, metavar="A B", help="Paired differences of method A minus B.")
@click.option("--no-plot", is_flag=True)
@click.option("--seeds", default=None, callback=_int_list, metavar="K,K,...",
              help="Each <run>/results stands for <run>-seed<k>/results of every seed k.")
def report(results, out_dir, compare, no_plot, seeds):
    """RESULTS: result folders, or episodes folders (paired per-episode tables) [default: runs/demo/results].
    Run folders <recipe>-seed<k> are averaged over seeds."""
    click.echo(run_stage("report", None, (), results=list(results) or None, out_dir=out_dir,
                         compare=list(compare) if compare else None, plot=not no_plot, seeds=seeds))


main.add_command(report, "parse")


@stage_command("incremental")
@click.option("--run", default=None, help="Run folder of a cosine-classifier network (or name under runs/).")
@click.option("--checkpoint", default=None, help="[default: <run>/checkpoints/last.pt]")
@click.option("--dataset", default=None, type=RegistryChoice("lowshot.data", "DATASETS"), help="[default: the checkpoint's]")
@click.option("--root", default=None, help="Folder of an on-disk data set (sets dataset_args.root), e.g. CIFAR-100.")
@click.option("--setup", type=click.Choice(["1", "2"]), default=None, help="1 = validation-novel classes, 2 = test [default: 2].")
@click.option("--classes", default=None, callback=_int_list, help="Novel classes [default: the first num_classes of the setup's].")
@click.option("--draws", type=int, default=None, help="Shot draws per class [default: 5].")
@click.option("--n", "ns", default=None, callback=_int_list, help="Comma-separated shot counts [default: 1,5,10,20].")
@click.option("--methods", default=None, help="Comma-separated methods [default: all].")
@click.option("--force", is_flag=True, default=None, help="Recompute cells that exist.")
@common
def incremental(run, checkpoint, dataset, root, setup, classes, draws, ns, methods, force, config, sets, seed, device):
    from lowshot.run import run_dir
    path = run_stage("incremental", config, sets, with_root(root), run=run and run_dir(run), checkpoint=checkpoint,
                     dataset=dataset, setup=setup and int(setup), classes=classes, draws=draws, ns=ns,
                     methods=methods and [m.strip() for m in methods.split(",")], force=force, seed=seed, device=device)
    click.echo(f"wrote {path}")


@stage_command("fscil")
@click.option("--run", default=None, help="Run folder (or name under runs/).")
@click.option("--more-runs", default=None, help="Comma-separated runs of the same representation with other seeds.")
@click.option("--sessions", default=None,
              help="cifar100 | mini_imagenet | cub200 (shipped), a session file, or draw [default: draw].")
@click.option("--root", default=None, help="The data set copy a published session file names (sets dataset_args.root).")
@click.option("--trials", type=int, default=None, help="Shot draws / session orderings [default: 5].")
@click.option("--methods", default=None, help="Comma-separated methods [default: all].")
@click.option("--force", is_flag=True, default=None, help="Recompute cells that exist.")
@common
def fscil(run, more_runs, sessions, root, trials, methods, force, config, sets, seed, device):
    from lowshot.run import run_dir
    path = run_stage("fscil", config, sets, with_root(root), run=run and run_dir(run),
                     more_runs=more_runs and [run_dir(r.strip()) for r in more_runs.split(",") if r.strip()],
                     sessions=sessions, trials=trials, methods=methods and [m.strip() for m in methods.split(",")],
                     force=force, seed=seed, device=device)
    click.echo(f"wrote {path}")


@main.command()
@click.option("--run", required=True, help="Run folder (or name under runs/).")
@click.option("--from-stage", default=None, help="The first job; earlier stages' outputs must exist [default: train].")
@click.option("--stages", default=None, help="Comma-separated jobs beyond those the heads need (e.g. episodes), or all.")
@click.option("--skip", default=None, help="Comma-separated jobs left out (e.g. report).")
@click.option("--heads", default=None, type=RegistryChoice("lowshot.heads", "HEADS", many=True, keep_all=True),
              help="Comma-separated head names, or 'all' (every head the inputs allow) [default: logreg].")
@click.option("--generator", default=None, type=RegistryChoice("lowshot.generators", "GENERATORS"),
              help="The benchmark's generator (its training stage joins the jobs).")
@click.option("--expid", default=None, callback=_int_list, help="Experiment ids of the array [default: 1-5].")
@click.option("--array-by", default=None, help="One array task per experiment | experiment-head [default: experiment].")
@click.option("--torchrun", type=int, default=None, help="Run train under torchrun with N processes per node.")
@click.option("--nodes", type=int, default=None, help="Nodes of the train job (torchrun on each; --torchrun per node).")
@click.option("--setup-line", "setup", multiple=True, metavar="LINE",
              help="A shell line run before each job's command, e.g. 'module load cuda' (repeatable).")
@click.option("--seeds", default=None, callback=_int_list, help="Training seeds: every job an array over <run>-seed<k>.")
@click.option("--args", "stage_args", multiple=True, metavar="STAGE=ARGS", help="More options of a stage's command.")
@click.option("--partition", multiple=True, metavar="[STAGE=]VALUE", help="Per stage, or for all; also a JSON object.")
@click.option("--account", multiple=True, metavar="[STAGE=]VALUE")
@click.option("--gpus", multiple=True, metavar="[STAGE=]N",
              help="GPUs per job; without STAGE, for the stages that use one [default: 1 on a GPU partition].")
@click.option("--cpus", multiple=True, metavar="[STAGE=]N", help="CPUs per task.")
@click.option("--mem", multiple=True, metavar="[STAGE=]SIZE", help="e.g. 16G.")
@click.option("--time", multiple=True, metavar="[STAGE=]LIMIT", help="e.g. train=2-00:00:00 or 1:00:00.")
@click.option("--submit", is_flag=True, default=None, help="Submit the jobs with sbatch, chained.")
@click.option("--dry-run", is_flag=True, default=None, help="Print the scripts; write and submit nothing.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config field.")
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="JSON config file.")
def slurm(run, from_stage, stages, skip, heads, generator, expid, array_by, torchrun, nodes, setup, seeds, stage_args,
          submit, dry_run, sets, config, **resources):
    """Write the pipeline as SLURM jobs chained by dependencies (into <run>/slurm/); --submit submits them.

    train -> features -> the stages of the heads' trained models -> benchmark (job array) -> report.
    Every stage skips finished work, so resubmitting after a failure or a scancel runs only what is missing.
    """
    from lowshot.config import resolve_config
    from lowshot.run import run_dir
    from lowshot.slurm import SlurmConfig, per_stage
    from lowshot.slurm import slurm as slurm_stage
    cfg = resolve_config(SlurmConfig, config, _overrides(sets), run=run_dir(run), from_stage=from_stage,
                         stages=stages and stages.split(","), skip=skip and skip.split(","), heads=heads,
                         generator=generator, expids=expid, array_by=array_by, torchrun=torchrun, nodes=nodes,
                         setup=list(setup) or None, seeds=seeds,
                         args=per_stage(stage_args, "args") or None, submit=submit, dry_run=dry_run,
                         **{name: per_stage(values, name) or None for name, values in resources.items()})
    click.echo("\n".join(slurm_stage(cfg)))
