"""One test per class of fault found on real image folders (issue 21): data identity, moved run folders,
read-only and full disks, config sources, stale temporaries, progress output, process counts."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from image_trees import corrupt, folder_tree, glyphs6, imagenet_tree, tiny_train_config  # noqa: F401 (fixture)
from synthetic_cli import error_line, invoke

from lowshot.io.atomic import atomic_path

HOST = socket.gethostname()


def written_for(kind: str, folder: str = "label_splits", suffix: str = ".json") -> list:
    return sorted(Path(folder).glob(f"{kind}-*{suffix}"))


def test_two_data_sets_of_one_kind_keep_their_own_files(tmp_path, monkeypatch, glyphs6):
    monkeypatch.chdir(tmp_path)
    a = folder_tree(tmp_path / "a", glyphs6)
    b = folder_tree(tmp_path / "b", glyphs6, names=[f"other_{c}" for c in range(6)])
    assert invoke("data", "--dataset", "folder", "--root", a).exit_code == 0
    assert invoke("data", "--dataset", "folder", "--root", b).exit_code == 0
    split_a, split_b = written_for("folder")  # one label split per tree, never shared
    assert len(written_for("folder", "experiment_cfgs", "")) == 2
    cfg = tiny_train_config(tmp_path / "train.json", epochs=1, dataset="folder")
    wrong = error_line(invoke("train", "--root", b, "--run", "runs/x", "--config", cfg, "--set",
                              f"splits={split_a if 'other_0' not in split_a.read_text() else split_b}"))
    assert "was written for other data" in wrong and not Path("runs/x/checkpoints").exists()


def test_imagenet_builds_its_meta_files_outside_the_data_root(tmp_path, monkeypatch, glyphs6):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOWSHOT_CACHE", str(tmp_path / "cache"))
    root = imagenet_tree(tmp_path / "in", glyphs6)
    before = sorted(p for p in root.rglob("*"))
    assert invoke("data", "--dataset", "imagenet", "--root", root).exit_code == 0
    assert sorted(p for p in root.rglob("*")) == before  # nothing written into the user's data
    assert len(list((tmp_path / "cache" / "imagenet-meta").glob("*.json"))) == 2


def test_a_moved_run_folder_resumes_every_stage(tiny_project):
    steps = [("train", "--config", "train.json"), ("features",), ("generate", "--set", "iterations=10"),
             ("train-matching", "--set", "episodes=5"),
             ("benchmark", "--heads", "logreg,matching", "--n", "1", "--expid", "1", "--generator", "analogies",
              "--max-per-label", "2")]
    for step in steps:
        out = invoke(step[0], "--run", "runs/a", "--device", "cpu", *step[1:])
        assert out.exit_code == 0, out.output
    shutil.move("runs/a", "elsewhere/b")  # renamed and moved; then given by its absolute path
    stamps = {p: p.stat().st_mtime_ns for p in Path("elsewhere/b").rglob("*")  # outputs, not the command records
              if p.is_file() and "log" not in p.name and p.name != "train_config.json"}
    for step in steps:
        out = invoke(step[0], "--run", str(Path("elsewhere/b").resolve()), "--device", "cpu", *step[1:])
        assert out.exit_code == 0 and "different" not in out.output, out.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # every output was up to date: nothing recomputed
    assert "0 new result files" in out.output
    # a model file re-made with other thread counts records them, but later identities name its weights
    assert invoke("generate", "--run", "elsewhere/b", "--device", "cpu", "--force", "--set", "iterations=10",
                  "--set", "cpu_threads=2").exit_code == 0
    bench = (*steps[-1][:1], "--run", "elsewhere/b", "--device", "cpu", *steps[-1][1:])
    assert "0 new result files" in invoke(*bench).output
    # another generator replaces its cells' files; a file of the same cell under an older naming is removed
    results = sorted(Path("elsewhere/b/results").glob("*.json"))
    old = json.loads(results[0].read_text())
    old["generator"] = {**old["generator"], "key": old["inputs"].pop("generator")}
    Path(str(results[0]).rsplit("_", 1)[0] + "_0123456789abcdef.json").write_text(json.dumps(old))
    assert invoke("generate", "--run", "elsewhere/b", "--device", "cpu", "--set", "iterations=12").exit_code == 0
    assert f"{len(results)} new result files" in invoke(*bench).output
    assert sorted(Path("elsewhere/b/results").glob("*.json")) == results
    longer = invoke("train", "--run", "elsewhere/b", "--config", "train.json", "--epochs", "3", "--device", "cpu")
    assert longer.exit_code == 0 and '"epoch": 2' in longer.output and '"epoch": 1' not in longer.output


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system of its own (tmpfs), unmounted afterwards; skipped where mounting is not allowed."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path) -> None:
    """Write into `folder` until its file system is full."""
    try:
        with open(folder / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass


def test_read_only_and_full_run_folders_are_one_line_and_lose_nothing(feature_project, small_disk):
    shutil.copytree("runs/synth/features", small_disk / "run/features")
    fill(small_disk)
    full = error_line(invoke("benchmark", "--run", small_disk / "run", "--n", "1", "--expid", "1", "--device", "cpu"))
    assert str(small_disk / "run/results") in full and "No space left on device" in full
    assert not list((small_disk / "run").rglob("*.tmp"))
    (small_disk / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    before = {p: p.read_bytes() for p in small_disk.rglob("*.hdf5")}
    line = error_line(invoke("benchmark", "--run", small_disk / "run", "--n", "1", "--expid", "1", "--force",
                             "--device", "cpu"))
    assert "Read-only file system" in line and str(small_disk / "run") in line
    assert {p: p.read_bytes() for p in small_disk.rglob("*.hdf5")} == before
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)


def test_config_errors_name_where_the_value_came_from(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"epochs": 2}))
    line = error_line(invoke("train", "--config", tmp_path / "c.json", "--set", "epoch=2"))
    assert line.startswith("Error: --set epoch=2: unknown config key 'epoch'") and "did you mean 'epochs'" in line
    (tmp_path / "c.json").write_text(json.dumps({"ns": ["a"]}))
    line = error_line(invoke("benchmark", "--config", tmp_path / "c.json"))
    assert line.startswith(f"Error: {tmp_path / 'c.json'}: config key 'ns'") and "list of int" in line


def test_stale_temporaries_of_killed_writers_on_this_host_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, running, remote, old_style = (tmp_path / f".out.json.{h}.{pid}.x1y2.tmp" for h, pid in (
        (HOST, dead.pid), (HOST, os.getpid()), ("another-host", dead.pid), ("x", "old")))
    for p in (stale, running, remote, old_style):
        p.write_text("partial")
    with atomic_path(tmp_path / "out.json") as tmp:
        tmp.write_text("{}")
    assert not stale.exists() and running.exists() and remote.exists() and old_style.exists()
    assert (tmp_path / "out.json").read_text() == "{}"


def test_progress_bars_only_when_asked_or_on_a_terminal(feature_project):
    args = ("benchmark", "--run", "runs/synth", "--n", "1", "--expid", "1,2", "--device", "cpu", "--jobs", "1")
    assert "benchmark cells" not in invoke(*args).output  # a log, not a terminal: no bar
    assert "benchmark cells" in invoke("--progress", *args, "--force").output
    assert "intra-op thread per process" in invoke(*args).output  # the thread choice is said


def test_results_do_not_depend_on_processes_or_threads(feature_project):
    """Cells are seeded by their coordinates, not by the process that runs them. (On these tiny problems the
    intra-op reductions are not split across threads; on the demo's a multi-threaded sum can move an
    iterative fit by a test image: docs/speed.md.)"""
    def results(folder, *extra):
        out = invoke(*extra, "benchmark", "--run", "runs/synth", "--heads", "logreg,protonet,imprint_ft", "--n", "1,5",
                     "--device", "cpu", "--set", f"out_dir={folder}", *(["--jobs", "2"] if folder == "b" else []))
        assert out.exit_code == 0, out.output
        return {p.name: {k: v for k, v in json.loads(p.read_text()).items() if k not in ("wall_time_s", "input_files")}
                for p in Path(folder).glob("*.json")}
    one = results("a")
    assert len(one) == 30 and results("b") == one and results("c", "--threads", "2") == one


def test_verify_lists_every_undecodable_image_at_once(tmp_path, monkeypatch, glyphs6):
    monkeypatch.chdir(tmp_path)
    root = folder_tree(tmp_path / "f", glyphs6)
    bad = [root / "train/class_1/img_003.png", root / "test/class_4/img_000.png"]
    for path in bad:
        corrupt(path)
    out = invoke("data", "--dataset", "folder", "--root", root, "--verify")
    errors = [line for line in out.output.splitlines() if line.startswith("Error: ")]
    assert out.exit_code == 1 and len(errors) == 1 and "2 of 156 images cannot be decoded" in errors[0]
    assert all(f"{p}: cannot decode image" in out.output for p in bad)  # every bad file, at once
    assert not Path("label_splits").exists()  # nothing written before the images are sound


def test_small_images_are_read_at_their_own_size_through_a_small_stem(tmp_path, glyphs6):
    from lowshot.data import DATASETS
    from lowshot.stages.train import TrainConfig, input_side, stem_for
    data = DATASETS.create("folder", root=str(folder_tree(tmp_path / "f", glyphs6)))  # 32-pixel images
    assert (data.transforms, data.image_size) == ("crop", 32)
    assert stem_for(TrainConfig().stem, input_side(TrainConfig(), data)) == "small"
    assert stem_for("auto", 224) == "imagenet" and stem_for("cifar", 32) == "cifar"
    assert DATASETS.create("folder", root=str(tmp_path / "f"), transforms="hg").image_size is None


def test_episode_results_do_not_depend_on_processes(feature_project):
    def table(jobs):
        out = invoke("episodes", "--run", "runs/synth", "--device", "cpu", "--set", f"jobs={jobs}",
                     "--set", "episodes=30", "--set", "queries=4", "--set", "ways=[2,3]", "--set", "shots=[1,5]",
                     "--set", 'heads=["protonet","bd_cspn"]', "--set", f"out_dir=ep{jobs}")
        assert out.exit_code == 0, out.output
        assert "lowshot episodes: 120 episodes × 2 heads" in out.output  # the work is announced first
        return [line.split(",")[:7] for line in Path(f"ep{jobs}/episodes.csv").read_text().splitlines()]
    assert table(2) == table(1)
