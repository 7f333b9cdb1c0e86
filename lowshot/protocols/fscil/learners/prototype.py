"""Prototypes on a frozen representation: the strong baseline of the CEC/FACT era."""
from __future__ import annotations

from lowshot.protocols.fscil.learners.base import LEARNERS, BaseSession, CosineRows, Session, mean_rows


@LEARNERS.register("prototype")
class Prototype(CosineRows):
    """Cosine prototypes, as CEC's decoupled baseline (Zhang et al., "Few-Shot Incremental Learning with
    Continually Evolved Classifiers", CVPR 2021, arXiv 2104.03047: decoupled training) and FACT (Zhou et al., CVPR 2022)
    build their classifiers: every class, base and new, is the mean of its training features (of the
    whole base session, of the shots later) on the frozen representation, scored by cosine.

    Keeps one row per class and nothing else; a new session never touches earlier rows, so the scores
    of earlier classes never change. `normalise_rows=True` averages unit features instead (imprinting's
    normalise-twice); the scale only sets the softmax temperature (16, CEC's), never the top-1.
    """

    frozen_old = True

    def __init__(self, normalise_rows: bool = False, scale: float = 16.0):
        self.normalise_rows = normalise_rows
        self.scale = scale

    def start(self, base: BaseSession) -> "Prototype":
        self.scale_ = float(self.scale)
        self.weight_ = mean_rows(base.feats, base.labels, base.classes, self.normalise_rows)
        self.classes_ = list(base.classes)
        return self

    def add(self, session: Session) -> "Prototype":
        self._check_started()
        self._grow(mean_rows(session.feats, session.labels, session.classes, self.normalise_rows), session.classes)
        return self
