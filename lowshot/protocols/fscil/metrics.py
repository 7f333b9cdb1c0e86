"""FSCIL metrics: after each session, on the test images of every class seen so far; then over sessions.

Per session (image-weighted, top-1 over all the classes seen so far): `top1` on every test image;
`base_accuracy` on the base classes' test images; `new_accuracy` on those of the classes added in
sessions 2..t (NaN in the base session); `harmonic_mean` = 2·b·n / (b + n) of those two (0 when
both are 0, NaN in the base session).

Over the sessions of one run (names say which session they summarise, the confusion behind FOSTER
issue #4): `top1_base_session` (session 1), `top1_last_session`, `top1_average_over_sessions` (the
mean over every session, the base one included: CEC's and FACT's "Avg"), `performance_drop` =
`top1_base_session` − `top1_last_session` ("PD"), and `base_accuracy_last_session`,
`new_accuracy_last_session`, `harmonic_mean_last_session`.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

OVERALL = ("top1_base_session", "top1_last_session", "top1_average_over_sessions", "performance_drop",
           "base_accuracy_last_session", "new_accuracy_last_session", "harmonic_mean_last_session")
PER_SESSION = ("top1", "base_accuracy", "new_accuracy", "harmonic_mean")


def harmonic_mean(b: float, n: float) -> float:
    """2·b·n / (b + n); 0 when both are 0; NaN when either is NaN."""
    if np.isnan(b) or np.isnan(n):
        return float("nan")
    return 0.0 if b + n == 0 else 2 * b * n / (b + n)


def session_metrics(scores: torch.Tensor, truth: torch.Tensor, is_base: torch.Tensor) -> Dict[str, float]:
    """Metrics of one session from scores (M, K) over the classes seen so far, each test image's true
    column truth (M,) and whether it is a base-class image is_base (M,) bool."""
    correct = (scores.argmax(1) == truth).float()
    base = float(correct[is_base].mean()) if is_base.any() else float("nan")
    new = float(correct[~is_base].mean()) if (~is_base).any() else float("nan")
    return {"top1": float(correct.mean()), "base_accuracy": base, "new_accuracy": new,
            "harmonic_mean": harmonic_mean(base, new)}


def over_sessions(rows: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """The summaries of one run's per-session metrics (`rows` in session order, base first)."""
    top1 = np.asarray([r["top1"] for r in rows], float)
    last = rows[-1]
    return {"top1_base_session": float(top1[0]), "top1_last_session": float(top1[-1]),
            "top1_average_over_sessions": float(top1.mean()), "performance_drop": float(top1[0] - top1[-1]),
            "base_accuracy_last_session": last["base_accuracy"], "new_accuracy_last_session": last["new_accuracy"],
            "harmonic_mean_last_session": last["harmonic_mean"]}
