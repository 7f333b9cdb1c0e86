"""Fixed episode files: the row indices of every support and query set of an episodic evaluation.

An episode file belongs to a data set and a setup, not to a run: every head and every representation
of the data set that asks for the same (split, ways, shots, queries, episode count, seed, sampler)
finds the same file and is scored on the same episodes, so their results pair episode by episode.

    experiment_cfgs/<dataset>/episodes/[<data>-]<split>-<setting>-seed<seed>-<id>.npz

`<data>` names loader arguments that change the images (e.g. `variant-outline`), `<id>` is the digest
of the request (`meta`: sampler, data set, split, classes and the digest of the feature rows' labels).
The file (numpy `.npz`, no pickles) holds, episode after episode:

    classes (ΣW,)          each episode's classes (global labels), way 0 first
    ways (E,)              W of each episode
    support (ΣS,)          rows of the test features, grouped by way; support_way (ΣS,), support_count (E,)
    query (ΣQ,)            rows, query_way (ΣQ,), query_count (E,)
    meta, fingerprint      the request as JSON, and the digest of meta + every array

Rows are tied to the feature file they index: `meta.labels_digest` is the digest of its labels, and a
feature file whose labels differ is refused. A file whose arrays no longer match its fingerprint is
refused too (edited or damaged: delete it to redraw).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from lowshot.errors import InputError
from lowshot.io.atomic import atomic_path
from lowshot.io.fingerprint import digest

FORMAT = "lowshot-episodes/1"
ARRAYS = ("classes", "ways", "support", "support_way", "support_count", "query", "query_way", "query_count")
# standard settings by name: 5-way 1- and 5-shot, 15 queries per class
NAMED = {f"standard{suffix}": [f"5w1s15q-{n}", f"5w5s15q-{n}"]
         for suffix, n in (("", 600), ("-600", 600), ("-2000", 2000), ("-10000", 10000))}
_FIXED = re.compile(r"^(\d+)w(\d+)s(?:(\d+)q)?-(\d+)(?:-dir([0-9.]+))?$")
_MD = re.compile(r"^md-(\d+)$")


@dataclass(frozen=True)
class Setting:
    """What an episode file draws: `ways`-way `shots`-shot episodes with `queries` per class (or a Dirichlet
    split of ways × queries, `query_dirichlet` > 0), or Meta-Dataset's variable episodes (`sampler`)."""

    ways: int = 5
    shots: int = 1
    queries: int = 15
    episodes: int = 600
    query_dirichlet: float = 0.0
    sampler: str = "fixed"  # fixed | metadataset

    @property
    def name(self) -> str:
        if self.sampler == "metadataset":
            return f"md-{self.episodes}"
        tail = f"-dir{self.query_dirichlet:g}" if self.query_dirichlet > 0 else ""
        return f"{self.ways}w{self.shots}s{self.queries}q-{self.episodes}{tail}"

    @property
    def protocol(self) -> str:
        if self.sampler == "metadataset":
            return "Meta-Dataset variable-way variable-shot"
        return "N-way K-shot" + (f", Dirichlet({self.query_dirichlet:g}) queries" if self.query_dirichlet > 0 else "")

    def words(self) -> str:
        """The setting in words, for table titles."""
        if self.sampler == "metadataset":
            return "5–50 ways, class-imbalanced shots, ≤ 10 queries per class (Meta-Dataset rules)"
        spread = (f"{self.ways} × {self.queries} queries split ~ Dirichlet({self.query_dirichlet:g})"
                  if self.query_dirichlet > 0 else f"{self.queries} queries per class")
        return f"{self.ways}-way {self.shots}-shot, {spread}"

    def sampler_meta(self) -> Dict[str, Any]:
        if self.sampler == "metadataset":
            from lowshot.protocols.metadataset import MetaDatasetRules
            return {"kind": "metadataset", **MetaDatasetRules().__dict__}
        return {"kind": "fixed", "ways": self.ways, "shots": self.shots, "queries": self.queries,
                "query_dirichlet": self.query_dirichlet}


def parse_settings(names: Sequence[str], queries: int = 15, query_dirichlet: float = 0.0) -> List[Setting]:
    """Settings from names: `standard[-600|-2000|-10000]`, `<W>w<S>s[<Q>q]-<episodes>` (Q defaults to
    `queries`) or `md-<episodes>`; `query_dirichlet` applies to the fixed-way ones."""
    out = []
    for name in [n for key in names for n in NAMED.get(key, [key])]:
        fixed, md = _FIXED.match(name), _MD.match(name)
        if md:
            out.append(Setting(0, 0, 0, int(md.group(1)), sampler="metadataset"))
        elif fixed:
            w, s, q, e, a = fixed.groups()
            out.append(Setting(int(w), int(s), int(q) if q else queries, int(e), float(a) if a else query_dirichlet))
        else:
            raise InputError(None, f"unknown episode setting {name!r}; use {', '.join(NAMED)}, "
                                   "e.g. 5w1s15q-600 (ways, shots, queries per class, episodes) or md-600")
    return out


@dataclass
class Episodes:
    """The episodes of one file, ragged, episode-major (see the module docstring); int64 arrays."""

    classes: np.ndarray
    ways: np.ndarray
    support: np.ndarray
    support_way: np.ndarray
    support_count: np.ndarray
    query: np.ndarray
    query_way: np.ndarray
    query_count: np.ndarray
    meta: Dict[str, Any]
    path: Optional[Path] = None

    def __len__(self) -> int:
        return len(self.ways)

    @property
    def fingerprint(self) -> str:
        """Digest of the request and of every row index."""
        return digest(FORMAT, self.meta, *[np.asarray(getattr(self, k), np.int64) for k in ARRAYS])

    @classmethod
    def from_dense(cls, support: torch.Tensor, query: torch.Tensor, truth: torch.Tensor, labels: np.ndarray,
                   meta: Dict[str, Any]) -> "Episodes":
        """From support rows (E, W, S), query rows (E, Q) and each query's way (E, Q)."""
        e, w, s = support.shape
        classes = labels[support[:, :, 0].numpy()].reshape(-1)
        order = truth.argsort(dim=1, stable=True)  # queries grouped by way, as the support is
        qry, way = query.gather(1, order), truth.gather(1, order)
        return cls(classes, np.full(e, w), support.reshape(-1).numpy(), np.tile(np.repeat(np.arange(w), s), e),
                   np.full(e, w * s), qry.reshape(-1).numpy(), way.reshape(-1).numpy(), np.full(e, query.shape[1]),
                   meta)

    @classmethod
    def from_list(cls, episodes: List[Tuple[np.ndarray, ...]], meta: Dict[str, Any]) -> "Episodes":
        """From (classes, support rows, support ways, query rows, query ways) per episode."""
        cat = lambda i: np.concatenate([np.asarray(ep[i], np.int64) for ep in episodes])  # noqa: E731
        count = lambda i: np.array([len(ep[i]) for ep in episodes], np.int64)  # noqa: E731
        return cls(cat(0), count(0), cat(1), cat(2), count(1), cat(3), cat(4), count(3), meta)

    def episode(self, i: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Episode i: support rows, their ways, query rows, their ways."""
        s0, q0 = int(self.support_count[:i].sum()), int(self.query_count[:i].sum())
        s1, q1 = s0 + int(self.support_count[i]), q0 + int(self.query_count[i])
        return self.support[s0:s1], self.support_way[s0:s1], self.query[q0:q1], self.query_way[q0:q1]

    def dense(self) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Support (E, W, S), query (E, Q) and truth (E, Q) when every episode has W ways of S shots and Q
        queries (what the batched heads take); None for variable episodes."""
        if len(self) == 0 or len(set(self.ways.tolist())) > 1 or len(set(self.query_count.tolist())) > 1:
            return None
        e, w = len(self), int(self.ways[0])
        s = int(self.support_count[0]) // w
        if (self.support_count != w * s).any() or not np.array_equal(
                self.support_way, np.tile(np.repeat(np.arange(w), s), e)):
            return None
        t = lambda a, *shape: torch.from_numpy(np.ascontiguousarray(a, np.int64)).reshape(*shape)  # noqa: E731
        q = int(self.query_count[0])
        return t(self.support, e, w, s), t(self.query, e, q), t(self.query_way, e, q)


def labels_digest(labels: np.ndarray) -> str:
    """The digest that ties an episode file to the rows it indexes: that of the feature file's labels."""
    return digest(np.asarray(labels, np.int64))


def file_stem(setting: Setting, meta: Dict[str, Any], seed: int) -> str:
    """`[<data>-]<split>-<setting>-seed<seed>-<digest of meta>`."""
    data = "-".join(f"{k}-{v}" for k, v in sorted(meta.get("data", {}).items()))
    data = data if re.fullmatch(r"[A-Za-z0-9_.=-]{1,60}", data or "-") else digest(meta["data"])[:8]
    return f"{data + '-' if data else ''}{meta['split']}-{setting.name}-seed{seed}-{digest(meta)}"


def write_episodes(path: Path, ep: Episodes) -> None:
    """The episode file, atomically (compressed npz; indices stored as int32 when they fit)."""
    arrays = {k: np.asarray(getattr(ep, k), np.int32 if getattr(ep, k).max(initial=0) < 2 ** 31 else np.int64)
              for k in ARRAYS}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays, meta=np.array(json.dumps(ep.meta, sort_keys=True)),
                            fingerprint=np.array(ep.fingerprint))


def read_episodes(path: Path) -> Episodes:
    """An episode file, checked against the fingerprint it records."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k].astype(np.int64) for k in ARRAYS}
            meta, stored = json.loads(str(z["meta"])), str(z["fingerprint"])
    except (OSError, ValueError, KeyError) as e:
        raise InputError(path, f"is not a lowshot episode file ({e.__class__.__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise InputError(path, f"records format {meta.get('format')!r}, not {FORMAT!r}")
    ep = Episodes(**arrays, meta=meta, path=Path(path))
    if ep.fingerprint != stored:
        raise InputError(path, f"its rows do not match the fingerprint it records ({stored}; they digest to "
                               f"{ep.fingerprint}): the file was changed; delete it to draw it again")
    return ep


def check_rows(ep: Episodes, labels: np.ndarray, features: Any) -> None:
    """Refuse a feature file (`features` names it) whose labels are not those the episode file indexes."""
    have, want = labels_digest(labels), ep.meta.get("labels_digest")
    if have != want:
        raise InputError(ep.path, f"indexes feature rows whose labels digest to {want}, but {features} has labels "
                                  f"digesting to {have} ({len(labels)} rows): other images or another data set")


def episode_file(folder: Path, setting: Setting, seed: int, meta: Dict[str, Any],
                 draw: Callable[[Dict[str, Any]], Episodes], explicit: Optional[str] = None) -> Episodes:
    """The episode file of `setting` in `folder` (or `explicit`): read when it exists, else drawn and written.

    Args:
        meta: the request without the setting (data set, data, split, setup, classes_digest, labels_digest).
        draw: draws the episodes of a full request (`meta` with `format`, `setting`, `sampler`, `episodes`, `seed`).
    """
    if explicit:
        return read_episodes(Path(explicit))
    full = {"format": FORMAT, **meta, "setting": setting.name, "protocol": setting.protocol,
            "sampler": setting.sampler_meta(), "episodes": setting.episodes, "seed": seed}
    path = Path(folder) / f"{file_stem(setting, full, seed)}.npz"
    if path.exists():
        ep = read_episodes(path)
        if ep.meta != full:
            raise InputError(path, "records another request than its name says; delete it to draw it again")
        return ep
    ep = draw(full)
    write_episodes(path, ep)
    ep.path = path
    return ep
