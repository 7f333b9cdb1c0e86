"""Feature files read by rows (`read_features(lazy=True)`) and written in blocks (`feature_writer`)."""
import h5py
import numpy as np
import pytest

from lowshot.errors import InputError
from lowshot.io.features import (
    FeatureSet,
    content_digest,
    feature_writer,
    read_features,
    write_features,
)
from lowshot.run import rows_of


@pytest.fixture
def hg_file(tmp_path):
    """A class-contiguous H&G-style file: 9 classes of 5–12 rows, d = 6, and padding rows after `count`."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(9), rng.integers(5, 13, size=9))
    path = tmp_path / "train.hdf5"
    with h5py.File(path, "w") as f:
        feats = np.zeros((len(labels) + 7, 6), np.float32)
        feats[:len(labels)] = rng.normal(size=(len(labels), 6))
        f.create_dataset("all_feats", data=feats)
        f.create_dataset("all_labels", data=np.r_[labels, np.zeros(7)].astype(np.int32))
        f.create_dataset("count", data=np.array([len(labels)], np.int32))
        f.attrs["dataset"] = "toy"
    return path


def test_row_reads_equal_the_whole_file_read(hg_file):
    eager, lazy = read_features(hg_file), read_features(hg_file, lazy=True)
    assert lazy.feats.shape == eager.feats.shape and lazy.dim == eager.dim
    np.testing.assert_array_equal(lazy.labels, eager.labels)
    for classes in ([0], [2, 5, 8], [1, 3, 4, 6, 7], list(range(9))):
        for a, b in zip(rows_of(lazy, classes), rows_of(eager, classes)):
            np.testing.assert_array_equal(a, b)
    idx = np.array([40, 3, 3, 17, 0, len(eager.labels) - 1, 18, 19])  # unsorted, a repeat, runs, both ends
    np.testing.assert_array_equal(lazy.feats[idx], eager.feats[idx])
    np.testing.assert_array_equal(lazy.feats[np.sort(idx)], eager.feats[np.sort(idx)])
    np.testing.assert_array_equal(lazy.feats[5:30], eager.feats[5:30])
    np.testing.assert_array_equal(np.asarray(lazy.feats), eager.feats)
    assert lazy.feats[np.array([], np.int64)].shape == (0, 6)
    with pytest.raises(IndexError):
        lazy.feats[np.array([len(eager.labels)])]  # a padding row is not a row


@pytest.mark.parametrize("gap_bytes, block_rows", [(0, 1 << 16), (2 * 4 * 6, 7), (1 << 18, 7), (1 << 18, 1 << 16)])
def test_rows_read_through_gaps_and_in_bounded_slices_are_the_rows_asked_for(hg_file, monkeypatch, gap_bytes,
                                                                              block_rows):
    monkeypatch.setattr("lowshot.io.features.GAP_BYTES", gap_bytes)  # 0, 2 or all unwanted rows read through
    monkeypatch.setattr("lowshot.io.features.BLOCK_ROWS", block_rows)
    eager, lazy = read_features(hg_file), read_features(hg_file, lazy=True)
    rng = np.random.default_rng(0)
    for size in (1, 5, 20, 60, 200):
        idx = rng.integers(0, len(eager.labels), size)  # unsorted, with repeats at the larger sizes
        np.testing.assert_array_equal(lazy.feats[idx], eager.feats[idx])


def test_block_digest_equals_the_in_memory_digest(hg_file, monkeypatch):
    eager = read_features(hg_file)
    monkeypatch.setattr("lowshot.io.features.BLOCK_ROWS", 7)  # many blocks, the last one short
    lazy = read_features(hg_file, lazy=True)
    assert len(list(lazy.feats.blocks())) > 3
    assert content_digest(lazy) == content_digest(eager)
    np.testing.assert_array_equal(read_features(hg_file).feats, eager.feats)  # whole read in 7-row blocks


def test_nan_in_rows_read_lazily_is_refused(tmp_path):
    feats = np.ones((6, 2), np.float32)
    feats[4, 1] = np.nan
    write_features(tmp_path / "nan.hdf5", FeatureSet(feats, np.arange(6) // 2))
    lazy = read_features(tmp_path / "nan.hdf5", lazy=True)
    assert lazy.feats[:4].shape == (4, 2)  # rows without NaN read fine
    with pytest.raises(InputError, match="nan.hdf5: features contain NaN"):
        rows_of(lazy, [2])


def test_block_writes_give_the_same_file_as_one_write(tmp_path):
    rng = np.random.default_rng(0)
    fs = FeatureSet(rng.normal(size=(23, 5)).astype(np.float32), np.arange(23) % 4, {"dataset": "x", "split": "train"},
                    rng.normal(size=(4, 5)).astype(np.float32), 7.5)
    write_features(tmp_path / "one.hdf5", fs)
    header = FeatureSet(np.zeros((0, 5), np.float32), fs.labels, fs.attrs, fs.classifier_weight, 7.5)
    with feature_writer(tmp_path / "blocks.hdf5", header) as write:
        for a, b in ((0, 10), (10, 11), (11, 23)):
            write(fs.feats[a:b])
    with h5py.File(tmp_path / "one.hdf5") as f, h5py.File(tmp_path / "blocks.hdf5") as g:
        assert sorted(f) == sorted(g) and dict(f.attrs) == dict(g.attrs)
        for name in f:
            assert f[name].dtype == g[name].dtype and f[name].chunks is None and g[name].chunks is None
            np.testing.assert_array_equal(f[name][...], g[name][...])
    assert (tmp_path / "one.hdf5").read_bytes() == (tmp_path / "blocks.hdf5").read_bytes()


def test_short_block_write_leaves_no_file(tmp_path):
    header = FeatureSet(np.zeros((0, 3), np.float32), np.zeros(10, np.int64))
    with pytest.raises(ValueError, match="4 of 10 feature rows written"):
        with feature_writer(tmp_path / "f.hdf5", header) as write:
            write(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="past the 10 × 3 rows"):
        with feature_writer(tmp_path / "f.hdf5", header) as write:
            write(np.ones((11, 3), np.float32))
    assert list(tmp_path.iterdir()) == []
