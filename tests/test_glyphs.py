"""The embedded glyph data set: layout, determinism, caching and the visual dedupe."""
import os

import numpy as np
import pytest

import lowshot.data.glyphs as G
from lowshot.data import DATASETS

SMALL = dict(num_classes=12, images_per_class=10, test_per_class=4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("glyph_cache"))


@pytest.fixture(scope="module")
def small(cache):
    return G.glyphs(**SMALL, cache_dir=cache)


def test_shapes_dtypes_and_label_layout(small):
    assert small.train_images.shape == (12 * 6, 1, 32, 32) and small.train_images.dtype == np.uint8
    assert small.test_images.shape == (12 * 4, 1, 32, 32) and small.test_images.dtype == np.uint8
    assert small.train_labels.dtype == np.int64 and small.test_labels.dtype == np.int64
    np.testing.assert_array_equal(small.train_labels, np.repeat(np.arange(12), 6))
    np.testing.assert_array_equal(small.test_labels, np.repeat(np.arange(12), 4))
    assert len(set(small.label_names)) == 12 and all(n.startswith("U+") for n in small.label_names)
    assert small.meta["codepoints"] == sorted(small.meta["codepoints"])
    assert small.meta["versions"] == G.library_versions() and small.meta["variant"] == "hard"


def test_registry_and_easy_variant(cache):
    ds = DATASETS.create("glyphs", **SMALL, variant="easy", cache_dir=cache)
    assert ds.train_images.shape == (72, 1, 32, 32) and ds.meta["variant"] == "easy"


def test_two_generations_are_byte_identical_in_one_or_two_processes(small, tmp_path, monkeypatch):
    monkeypatch.setattr(G, "available_cpus", lambda: 2)
    monkeypatch.setattr(G, "IMAGES_PER_PROCESS", 1)  # `small` was rendered here, this one by two forked processes
    again = G.glyphs(**SMALL, cache_dir=str(tmp_path))
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert getattr(again, name).tobytes() == getattr(small, name).tobytes()
    assert again.label_names == small.label_names


def test_class_images_do_not_depend_on_num_classes(small, cache):
    more = G.glyphs(**{**SMALL, "num_classes": 20}, cache_dir=cache)
    assert set(small.meta["codepoints"]) <= set(more.meta["codepoints"])
    for label, cp in enumerate(small.meta["codepoints"]):
        other = more.meta["codepoints"].index(cp)
        assert np.array_equal(small.train_images[small.train_labels == label],
                              more.train_images[more.train_labels == other])
        assert np.array_equal(small.test_images[small.test_labels == label],
                              more.test_images[more.test_labels == other])


def test_second_call_loads_from_cache(small, cache, monkeypatch):
    path = small.meta["cache_file"]
    assert os.path.dirname(path) == cache and os.path.exists(path)
    mtime = os.stat(path).st_mtime_ns
    monkeypatch.setattr(G, "_generate", lambda *a, **k: pytest.fail("regenerated a cached data set"))
    again = G.glyphs(**SMALL, cache_dir=cache)
    assert os.stat(path).st_mtime_ns == mtime
    assert np.array_equal(again.train_images, small.train_images)
    assert not [f for f in os.listdir(cache) if f.startswith(".tmp-")]


def test_version_mismatch_regenerates(small, tmp_path, monkeypatch):
    cache = str(tmp_path)
    G.glyphs(**SMALL, cache_dir=cache)
    calls = []
    real = G._generate
    monkeypatch.setattr(G, "_generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(G, "GENERATOR_VERSION", G.GENERATOR_VERSION + 1)
    ds = G.glyphs(**SMALL, cache_dir=cache)
    assert calls == [1] and ds.meta["generator_version"] == G.GENERATOR_VERSION
    assert ds.meta["versions"]["generator"] == str(G.GENERATOR_VERSION)
    G.glyphs(**SMALL, cache_dir=cache)
    assert calls == [1]  # the regenerated file is now current


def test_selected_classes_are_visually_distinct(small, cache):
    available = G.available_classes(cache)
    assert 600 < len(available) < 900  # environment.md measured about 740
    assert all(len(fonts) >= G.MIN_FONTS for fonts in available.values())
    vectors = np.stack([G.shape_vector(G.render_master(G.reference_font(f), cp))
                        for cp, f in available.items()])
    cosine = vectors @ vectors.T
    np.fill_diagonal(cosine, -1)
    assert cosine.max() <= G.DEDUPE_COSINE
    masters = [G.render_master(0, cp).tobytes() for cp in small.meta["codepoints"]
               if 0 in available[cp]]
    assert len(set(masters)) == len(masters)


def test_too_many_classes_or_bad_arguments_raise(cache):
    with pytest.raises(ValueError, match="available"):
        G.glyphs(num_classes=100_000, cache_dir=cache)
    with pytest.raises(ValueError, match="variant"):
        G.glyphs(**SMALL, variant="medium", cache_dir=cache)
    with pytest.raises(ValueError):
        G.glyphs(num_classes=12, images_per_class=10, test_per_class=11, cache_dir=cache)


def test_cache_root_precedence(monkeypatch):
    monkeypatch.setenv("LOWSHOT_CACHE", "/a")
    monkeypatch.setenv("XDG_CACHE_HOME", "/b")
    assert G.cache_root("/c") == "/c" and G.cache_root() == "/a"
    monkeypatch.delenv("LOWSHOT_CACHE")
    assert G.cache_root() == os.path.join("/b", "lowshot")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert G.cache_root() == os.path.join(os.path.expanduser("~"), ".cache", "lowshot")
