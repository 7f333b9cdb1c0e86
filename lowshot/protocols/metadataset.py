"""Variable-way variable-shot episodes with Meta-Dataset's sampling rules, on cached features.

Triantafillou et al., "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples",
ICLR 2020, Appendix (episode sampling). The rules below follow `EpisodeDescriptionSampler` and its
helpers in google-research/meta-dataset `meta_dataset/data/sampling.py` (commit
00ebaedcbdb8569fa4ef8be881b17cd11fa43e22) with the defaults of `meta_dataset/learn/gin/setups/
data_config_common.gin` (commit 0c8a9bbf076830a9e652f56c6b74b34d2ab0a6a1). With n_c the class's rows:

1. ways W ~ uniform on {min_ways, …, min(max_ways, number of classes)} (`sample_num_ways_uniformly`);
2. W classes uniformly without replacement (`sample_class_ids_uniformly`);
3. queries per class q = min(max_query, min_c ⌊n_c / 2⌋), the same for every class (`compute_num_query`);
4. support set size = min(max_support, Σ_c ⌊β · min(max_contrib, n_c − q)⌋ + 1), β ~ U(0, 1)
   (`sample_support_set_size`);
5. shots_c = min(⌊p_c · (size − W)⌋ + 1, n_c − q), p_c ∝ n_c · exp(U(log ½, log 2))
   (`sample_num_support_per_class`): class-imbalanced, at least one shot per class;
6. the q + shots_c rows of a class are drawn without replacement (support and query disjoint).

Simplified: no class hierarchy (their ImageNet DAG and Omniglot bi-level sampling), one data set per
episode (no multi-source), `min_examples_in_class` = 0, and numpy's `default_rng` instead of their
`RandomState`, so the rules are theirs but the episodes are not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from lowshot.errors import InputError


@dataclass(frozen=True)
class MetaDatasetRules:
    """The numbers of `data_config_common.gin` (EpisodeDescriptionConfig)."""

    min_ways: int = 5
    max_ways: int = 50  # max_ways_upper_bound
    max_query: int = 10  # max_num_query
    max_support: int = 500  # max_support_set_size
    max_contrib: int = 100  # max_support_size_contrib_per_class
    min_log_weight: float = math.log(0.5)
    max_log_weight: float = math.log(2.0)


def episode_counts(n: np.ndarray, rules: MetaDatasetRules, rng: np.random.Generator) -> Tuple[int, np.ndarray]:
    """Queries per class q and shots per class (W,) for classes of n (W,) rows (rules 3–5)."""
    if n.min() < 2:
        raise InputError(None, "Meta-Dataset episodes need at least 2 rows per class")
    q = int(min(rules.max_query, (n // 2).min()))
    remaining = n - q
    beta = rng.uniform()
    size = int(min(np.floor(beta * np.minimum(rules.max_contrib, remaining) + 1).sum(), rules.max_support))
    weights = n * np.exp(rng.uniform(rules.min_log_weight, rules.max_log_weight, size=len(n)))
    shots = np.floor(weights / weights.sum() * (size - len(n))).astype(np.int64) + 1
    return q, np.minimum(shots, remaining)


def draw_metadataset(labels: np.ndarray, classes: np.ndarray, episodes: int, seed: int,
                     rules: MetaDatasetRules = MetaDatasetRules()) -> List[Tuple[np.ndarray, ...]]:
    """`episodes` episodes over the rows of `classes` in `labels` (N,), seeded by `seed`.

    Returns:
        per episode (classes (W,), support rows, support ways, query rows, query ways): rows index
        `labels`, ways are 0..W−1 (the position of the row's class in the episode's classes).
    """
    rows = {int(c): np.flatnonzero(labels == c) for c in classes}
    pool = np.array([c for c, r in rows.items() if len(r) >= 2], np.int64)
    if len(pool) < rules.min_ways:
        raise InputError(None, f"Meta-Dataset episodes need {rules.min_ways} classes with at least 2 rows; "
                               f"{len(pool)} have them")
    rng = np.random.default_rng([seed, 0x4D44])
    out = []
    for _ in range(episodes):
        ways = int(rng.integers(rules.min_ways, min(rules.max_ways, len(pool)) + 1))
        chosen = rng.choice(pool, ways, replace=False)
        q, shots = episode_counts(np.array([len(rows[int(c)]) for c in chosen]), rules, rng)
        picks = [rng.permutation(rows[int(c)])[:q + s] for c, s in zip(chosen, shots)]
        out.append((chosen, np.concatenate([p[q:] for p in picks]), np.repeat(np.arange(ways), shots),
                    np.concatenate([p[:q] for p in picks]), np.repeat(np.arange(ways), q)))
    return out
