"""`lowshot add-class` on a trained glyph model: one novel class at a time, from its 5 shots of experiment 1.

For each of the first K novel classes of a setup, the 5 shot images (experiment 1's shot file) are
written as PNG files and added with `lowshot.protocols.addclass.add_class` — imprinting alone, and imprinting +
last-layer fine-tuning with each `--steps` value — then the new model is scored on the run's cached
test features: recall of the new class on its test images, base top-1 over the base classes' test
images (the model's own classes) against the model before the addition, base test images taken by
the new class, and the new class's precision. Prints one markdown row per method, mean ± 95 %
interval over the K classes, and the mean seconds one `add_class` call took.

Choose settings on setup 1 (validation classes), report setup 2:

    .venv/bin/python benchmarks/add_class.py --run runs/demo --setup 1 --steps 25,50,100,200
    .venv/bin/python benchmarks/add_class.py --run runs/demo --setup 2 --steps 200
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lowshot.data import DATASETS
from lowshot.heads.maths import l2_normalise
from lowshot.io.checkpoints import load_checkpoint
from lowshot.io.features import read_features
from lowshot.io.splits import load_label_splits, load_shots
from lowshot.protocols.addclass import AddClassConfig, add_class, load_classifier
from lowshot.run import RunFolder, shots_dir, splits_path
from lowshot.stats import mean_ci


def predictions(rows: torch.Tensor, class_ids, feats: torch.Tensor) -> np.ndarray:
    """Data-set label predicted for each feature row (−1: an added class), by cosine to the rows."""
    return np.asarray(class_ids)[(l2_normalise(feats) @ l2_normalise(rows).t()).argmax(1).numpy()]


def measure(out: Path, test, base_mask, new_class: int, before: np.ndarray) -> dict:
    """Metrics (in %) of the model in `out` on the cached test features."""
    ckpt = load_checkpoint(out)
    pred = predictions(ckpt["model"]["classifier.weight"], ckpt["class_ids"], test["feats"])
    labels, is_new = test["labels"], test["labels"] == new_class
    as_new = pred == -1
    return {"recall": 100 * as_new[is_new].mean(),
            "base_change": 100 * ((pred[base_mask] == labels[base_mask]).mean() - before.mean()),
            "base_to_new": float(as_new[base_mask].sum()),
            "precision": 100 * as_new[is_new].sum() / max(1, as_new[base_mask | is_new].sum())}


def one_class(args, c: int, data, test, base_mask, before, folder: Path) -> dict:
    """{method: metrics} for novel class c."""
    shots = load_shots(shots_dir("glyphs") / "splitfile_1.json", data.train_labels, np.array([c]), 5)
    images = folder / f"class{c}"
    images.mkdir()
    for i, r in enumerate(shots):
        Image.fromarray(data.train_images[r, 0]).save(images / f"{i}.png")
    methods = {"imprint": (False, {})}
    methods.update({f"imprint + FT, {s} steps": (True, {"steps": s}) for s in args.steps})
    out = {}
    for name, (ft, params) in methods.items():
        path, t0 = folder / f"c{c}-{len(out)}.pt", time.perf_counter()
        add_class(AddClassConfig(checkpoint=args.checkpoint, name=f"new {c}", images=str(images), out=str(path),
                                 fine_tune=ft, ft_params=params, device="cpu"))
        out[name] = {**measure(path, test, base_mask, c, before), "seconds": time.perf_counter() - t0}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/demo")
    p.add_argument("--setup", type=int, default=1)
    p.add_argument("--classes", type=int, default=10, help="the first K novel classes of the setup")
    p.add_argument("--steps", default="200", help="fine-tuning steps to try, comma-separated")
    args = p.parse_args()
    args.steps = [int(s) for s in args.steps.split(",")]
    args.checkpoint = str(RunFolder(Path(args.run)).path("checkpoint"))
    torch.manual_seed(0)
    clf = load_classifier(args.checkpoint)
    fs = read_features(RunFolder(Path(args.run)).path("test_features"))
    data = DATASETS.create(clf.config["dataset"], **clf.config["dataset_args"])
    splits = load_label_splits(splits_path("glyphs"))
    test = {"feats": torch.from_numpy(fs.feats), "labels": fs.labels}
    base_mask = np.isin(fs.labels, clf.class_ids)
    before = predictions(clf.model.classifier.weight.detach(), clf.class_ids, test["feats"][base_mask]) \
        == fs.labels[base_mask]
    print(f"{args.run}: base top-1 before adding {100 * before.mean():.1f} % over {base_mask.sum()} test images")
    novel = splits.setup(args.setup)[1][:args.classes]
    with tempfile.TemporaryDirectory() as tmp:
        results = [one_class(args, int(c), data, test, base_mask, before, Path(tmp)) for c in novel]
    print(f"\nsetup {args.setup}, novel classes {list(map(int, novel))}, 5 shots each (experiment 1)\n")
    print("| method | new-class recall | base top-1 change (points) | base images → new | new-class precision "
          "| s per add |")
    print("|---|---|---|---|---|---|")
    for name in results[0]:
        cells = [mean_ci([r[name][k] for r in results]) for k in ("recall", "base_change", "base_to_new", "precision")]
        secs = np.mean([r[name]["seconds"] for r in results])
        print(f"| {name} | " + " | ".join(f"{m:+.1f} ± {h:.1f}" if i == 1 else f"{m:.1f} ± {h:.1f}"
                                          for i, (m, h, _) in enumerate(cells)) + f" | {secs:.1f} |")


if __name__ == "__main__":
    main()
