"""Feature files: round trip, H&G files with padding rows and `all_features`, bad files."""
import h5py
import numpy as np
import pytest

from lowshot.errors import InputError
from lowshot.io.features import FeatureSet, read_features, write_features


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    fs = FeatureSet(rng.normal(size=(7, 3)).astype(np.float32), np.arange(7) % 3, {"dataset": "x", "seed": 4},
                    rng.normal(size=(3, 3)).astype(np.float32), 12.5)
    write_features(tmp_path / "f.hdf5", fs)
    back = read_features(tmp_path / "f.hdf5")
    np.testing.assert_array_equal(back.feats, fs.feats)
    np.testing.assert_array_equal(back.labels, fs.labels)
    np.testing.assert_array_equal(back.classifier_weight, fs.classifier_weight)
    assert back.classifier_scale == 12.5 and back.attrs["dataset"] == "x" and back.attrs["seed"] == 4
    with h5py.File(tmp_path / "f.hdf5") as f:  # H&G layout exactly
        assert f["all_feats"].dtype == np.float32 and f["all_feats"].chunks is None
        assert f["all_labels"].dtype == np.int32 and f["count"][0] == 7


@pytest.mark.parametrize("name", ["all_feats", "all_features"])
def test_reads_hg_file_with_padding_rows(tmp_path, name):
    """H&G pads to a multiple of the batch: zero rows with label 0 after `count`."""
    path = tmp_path / "hg.hdf5"
    with h5py.File(path, "w") as f:
        feats = np.zeros((64, 4), np.float32)
        feats[:50] = 1 + np.arange(200).reshape(50, 4)
        f.create_dataset(name, data=feats)
        f.create_dataset("all_labels", data=np.r_[np.arange(50) % 5, np.zeros(14)].astype(np.int32))
        f.create_dataset("count", data=np.array([50], np.int32))
    fs = read_features(path)
    assert fs.feats.shape == (50, 4) and len(fs.labels) == 50 and (fs.feats > 0).all()
    assert fs.classifier_weight is None and fs.classifier_scale is None


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(InputError, match="nope.hdf5: feature file not found"):
        read_features(tmp_path / "nope.hdf5")
    (tmp_path / "bad.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match="bad.hdf5: cannot read HDF5"):
        read_features(tmp_path / "bad.hdf5")


def test_nan_features_are_rejected(tmp_path):
    feats = np.ones((3, 2), np.float32)
    feats[1, 0] = np.nan
    write_features(tmp_path / "nan.hdf5", FeatureSet(feats, np.zeros(3, np.int64)))
    with pytest.raises(InputError, match="NaN"):
        read_features(tmp_path / "nan.hdf5")


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.hdf5"
    write_features(path, FeatureSet(np.ones((2, 2), np.float32), np.zeros(2, np.int64)))
    before = path.read_bytes()
    with pytest.raises(Exception):
        write_features(path, FeatureSet(np.ones((2, 2), np.float32), None))  # labels missing: fails mid-write
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.hdf5"]  # no temporary left behind


def test_a_model_files_digest_is_its_weights_and_identity_not_its_bookkeeping():
    """Saved from another run folder, with other workers, resume state or versions: the same digest; a changed
    weight (of any dtype), entry or identity: another one."""
    import torch

    from lowshot.io.checkpoints import model_digest

    def saved(run="runs/a", workers=2, w=1.0, half=0.5, identity="i"):
        return {"model": {"fc.weight": torch.full((2, 3), w), "half": torch.tensor([half], dtype=torch.bfloat16)},
                "identity": {"config": identity}, "epoch": 5, "rng": {"torch": torch.randint(0, 9, (4,))},
                "config": {"run": run, "workers": workers}, "optimizer": {"state": {0: torch.rand(3)}},
                "versions": {"torch": torch.__version__}, "features": f"{run}/features/train.hdf5"}
    same = model_digest(saved())
    assert model_digest(saved(run="/elsewhere/b", workers=8)) == same
    assert {model_digest(saved(w=1.0 + 2 ** -20)), model_digest(saved(half=0.75)), model_digest(saved(identity="j")),
            model_digest({**saved(), "epoch": 4})}.isdisjoint({same})
