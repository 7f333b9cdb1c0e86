"""`lowshot add-class` and `lowshot predict`: a held-out glyph class added from 5 images, Qi's rule, bad input."""
import csv
import io

import numpy as np
import torch
from PIL import Image

from lowshot.heads.maths import l2_normalise
from lowshot.io.checkpoints import load_checkpoint
from lowshot.protocols.addclass import (
    AddClassConfig,
    add_class,
    embed,
    load_classifier,
    predict,
)
from tests.synthetic_cli import error_line, invoke


def _write(folder, images, mode="L"):
    """uint8 images (N, 1, H, W) as PNG files in `folder` (converted to `mode`); returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:03d}.png" for i in range(len(images))]
    for path, image in zip(paths, images):
        Image.fromarray(image[0]).convert(mode).save(path)
    return [str(p) for p in paths]


def _top1(checkpoint, paths):
    rows = predict(checkpoint, paths, top_k=1, device="cpu")
    return [r["class"] for r in rows]


def test_held_out_class_is_predicted_and_base_accuracy_holds(glyph_model, tmp_path):
    m = glyph_model
    data, splits, new = m["data"], m["splits"], m["splits"].novel_classes_2[0]
    shots = _write(tmp_path / "shots", data.train_images[data.train_labels == new][:5], mode="RGB")
    out = invoke("add-class", "--checkpoint", m["checkpoint"], "--name", "new glyph", "--images", tmp_path / "shots",
                 "--fine-tune", "-o", tmp_path / "c2.pt", "--device", "cpu")
    assert out.exit_code == 0, out.output
    assert "converted 5 RGB image(s) to 1 channel(s)" in out.output and len(shots) == 5
    base = np.isin(data.test_labels, splits.base_classes)
    base_paths = _write(tmp_path / "base", data.test_images[base])
    truth = [splits.label_names[c] for c in data.test_labels[base]]
    before = np.mean(np.array(_top1(m["checkpoint"], base_paths)) == truth)
    after = np.mean(np.array(_top1(tmp_path / "c2.pt", base_paths)) == truth)
    assert after >= before - 0.02, (before, after)
    new_paths = _write(tmp_path / "new", data.test_images[data.test_labels == new])
    recall = np.mean(np.array(_top1(tmp_path / "c2.pt", new_paths)) == "new glyph")
    assert recall >= 0.4, recall  # 13 classes: chance is 1/13
    result = invoke("predict", "--checkpoint", tmp_path / "c2.pt", "--top-k", 3, "--csv", "--device", "cpu",
                    *new_paths[:2])
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] * 2 and rows[0]["image"] == new_paths[0]
    probs = [float(r["probability"]) for r in rows[:3]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_imprinted_row_is_the_normalised_mean_of_normalised_embeddings(glyph_model, tmp_path):
    m = glyph_model
    data, new = m["data"], m["splits"].novel_classes_1[0]
    images = data.train_images[data.train_labels == new][:5]
    _write(tmp_path / "shots", images)
    cfg = AddClassConfig(checkpoint=str(m["checkpoint"]), name="x", images=str(tmp_path / "shots"),
                         out=str(tmp_path / "c2.pt"), device="cpu")
    add_class(cfg)
    clf, ckpt = load_classifier(m["checkpoint"]), load_checkpoint(tmp_path / "c2.pt")
    shots = embed(clf, torch.from_numpy(images), torch.device("cpu"))
    rows = ckpt["model"]["classifier.weight"]
    expected = l2_normalise(l2_normalise(shots).mean(0))
    assert torch.allclose(rows[-1], expected, atol=1e-5)
    assert torch.allclose(rows[:-1], l2_normalise(clf.model.classifier.weight.detach()), atol=1e-6)
    assert torch.equal(ckpt["model"]["classifier.scale"], clf.model.classifier.scale.detach())
    assert ckpt["classes"] == clf.names + ["x"] and ckpt["class_ids"][-1] == -1
    assert add_class(cfg) == tmp_path / "c2.pt"  # the same addition again: up to date, nothing rewritten
    second = load_classifier(tmp_path / "c2.pt")
    assert second.names[-1] == "x" and len(second.model.classifier.weight) == len(clf.names) + 1
    other = data.train_images[data.train_labels == m["splits"].novel_classes_1[1]][:5]
    _write(tmp_path / "other", other)
    add_class(AddClassConfig(checkpoint=str(tmp_path / "c2.pt"), name="z", images=str(tmp_path / "other"),
                             out=str(tmp_path / "c3.pt"), fine_tune=True, ft_params={"steps": 20}, device="cpu"))
    third = load_checkpoint(tmp_path / "c3.pt")  # chained, fine-tuned on the base features and both additions
    assert third["classes"][-2:] == ["x", "z"] and [a["name"] for a in third["added"]] == ["x", "z"]
    assert third["source"] == ckpt["source"] and len(third["model"]["classifier.weight"]) == len(clf.names) + 2


def test_bad_inputs_are_one_line_each(glyph_model, tmp_path):
    m = glyph_model
    ckpt, base_name = m["checkpoint"], m["splits"].label_names[m["splits"].base_classes[0]]
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not an image")
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    _write(tmp_path / "good", m["data"].train_images[:2])
    junk = ("add-class", "--images", tmp_path / "junk", "-o", tmp_path / "out.pt", "--device", "cpu")
    assert "has no decodable image" in error_line(invoke(*junk, "--checkpoint", ckpt, "--name", "y"))
    add = ("add-class", "--images", tmp_path / "good", "-o", tmp_path / "out.pt", "--device", "cpu")
    exists = error_line(invoke(*add, "--checkpoint", ckpt, "--name", base_name))
    assert f"already has a class named {base_name!r}" in exists
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state.pt")
    unknown = error_line(invoke(*add, "--checkpoint", tmp_path / "state.pt", "--name", "y"))
    assert "unknown checkpoint format" in unknown
    (tmp_path / "text.pt").write_text("hello")
    assert "cannot load checkpoint" in error_line(invoke(*add, "--checkpoint", tmp_path / "text.pt", "--name", "y"))
    linear = _linear_checkpoint(m, tmp_path)
    refusal = error_line(invoke(*add, "--checkpoint", linear, "--name", "y"))
    assert "linear classifier" in refusal and "raw_imprint" in refusal and "--classifier cosine" in refusal
    from lowshot.io.features import FeatureSet, write_features
    write_features(tmp_path / "other.hdf5", FeatureSet(np.zeros((2, 4), np.float32), np.zeros(2, np.int64),
                                                       {"checkpoint_sha1": "0123456789ab"}))
    stale = error_line(invoke(*add, "--checkpoint", ckpt, "--name", "y", "--fine-tune", "--features",
                              tmp_path / "other.hdf5"))
    assert "was not extracted from" in stale
    assert not (tmp_path / "out.pt").exists()
    assert "cannot decode image" in error_line(invoke("predict", "--checkpoint", ckpt, tmp_path / "junk" / "a.png"))


def _linear_checkpoint(m, tmp_path):
    """An untrained (epochs = 0) linear-classifier checkpoint of the same data."""
    from lowshot.stages.train import TrainConfig, train
    args = load_checkpoint(m["checkpoint"])["config"]["dataset_args"]
    return train(TrainConfig(run=str(tmp_path / "linear"), dataset="glyphs", dataset_args=args,
                             splits=str(m["root"] / "splits/glyphs.json"), width=0.125, stem="small",
                             classifier="linear", epochs=0, device="cpu"))
