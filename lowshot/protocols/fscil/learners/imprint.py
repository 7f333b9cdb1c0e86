"""Imprinting into the representation's trained cosine classifier."""
from __future__ import annotations

from lowshot.heads.maths import base_rows, cosine_scale, l2_normalise
from lowshot.protocols.fscil.learners.base import LEARNERS, BaseSession, CosineRows, Session, mean_rows


@LEARNERS.register("imprint")
class Imprint(CosineRows):
    """Imprinted weights (Qi, Brown & Lowe, "Low-Shot Learning with Imprinted Weights", CVPR 2018,
    arXiv 1712.07136), one session at a time: the base classes keep the unit rows of the cosine
    classifier the representation was trained with, and each new class gets normalise(mean of its
    normalised shots); score s · cos with the classifier's s, so old and new rows share one scale.

    Keeps one row per class; a new session never touches earlier rows (frozen). Trap: needs a
    representation trained with the cosine classifier (its rows and s in the feature file).
    """

    frozen_old = True
    needs_classifier = True

    def __init__(self):
        pass

    def start(self, base: BaseSession) -> "Imprint":
        self.scale_ = cosine_scale(base, "imprint")
        rows = base_rows(base, "imprint", base.feats.device)
        self.weight_ = l2_normalise(rows[list(base.classes)])
        self.classes_ = list(base.classes)
        return self

    def add(self, session: Session) -> "Imprint":
        self._check_started()
        self._grow(mean_rows(session.feats, session.labels, session.classes, True), session.classes)
        return self
