"""Imprinting (or prototypes), then fine-tuning the cosine classifier on each session's few rows."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lowshot.errors import InputError
from lowshot.heads.maths import l2_normalise
from lowshot.protocols.fscil.learners.base import LEARNERS, BaseSession, CosineRows, Session, columns, mean_rows
from lowshot.protocols.fscil.learners.imprint import Imprint

OLD_ROWS = ("frozen", "l2", "free")
INITS = ("classifier", "prototypes")


@LEARNERS.register("imprint_ft")
class ImprintFT(CosineRows):
    """A cosine classifier whose rows are fine-tuned at each session on that session's rows only (the
    `imprint_ft` head of `lowshot benchmark`, Qi et al. CVPR 2018, arXiv 1712.07136, under FSCIL's rule
    that earlier sessions' data is gone): cross-entropy over every class seen so far, rows normalised in
    the forward pass, full-batch SGD with momentum for a fixed number of steps (nothing is chosen on
    test images).

    `init`: "classifier" = the `imprint` learner's rows (the trained classifier's base rows and its s,
    new rows imprinted); "prototypes" = the `prototype` learner's rows (class means) and s = `scale`,
    so that with `steps=0` it is exactly that learner and paired differences isolate the fine-tuning.
    `old` says what the earlier rows may do:
    - "frozen": only the new rows move (s too stays); earlier classes' scores never change.
    - "l2": every row moves, with a penalty l2/2 · Σ‖w_old − w_old⁰‖² pulling earlier rows back to
      where the session found them (s stays).
    - "free": every row and s move, unconstrained: fine-tuning on a few shots, which TOPIC (Tao et
      al., CVPR 2020, arXiv 2004.10956) shows forgetting the base classes ("Ft-CNN").
    """

    def __init__(self, init: str = "classifier", old: str = "frozen", steps: int = 100, lr: float = 0.1,
                 momentum: float = 0.9, wd: float = 5e-4, l2: float = 10.0, scale: float = 16.0):
        if old not in OLD_ROWS or init not in INITS:
            raise InputError(None, f"imprint_ft: init={init!r}, old={old!r}; choose init from {', '.join(INITS)} "
                                   f"and old from {', '.join(OLD_ROWS)}")
        self.init = init
        self.old = old
        self.steps = steps
        self.lr = lr
        self.momentum = momentum
        self.wd = wd
        self.l2 = l2
        self.scale = scale
        self.frozen_old = old == "frozen"
        self.needs_classifier = init == "classifier"

    def start(self, base: BaseSession) -> "ImprintFT":
        if self.init == "classifier":
            first = Imprint().start(base)
            self.weight_, self.scale_ = first.weight_, first.scale_
        else:
            self.weight_, self.scale_ = mean_rows(base.feats, base.labels, base.classes, False), float(self.scale)
        self.classes_ = list(base.classes)
        return self

    def add(self, session: Session) -> "ImprintFT":
        self._check_started()
        self._grow(mean_rows(session.feats, session.labels, session.classes, self.init == "classifier"),
                   session.classes)
        k_old = len(self.classes_) - len(session.classes)
        y = columns(session.labels, self.classes_).to(self.weight_.device)
        z = l2_normalise(session.feats.to(self.weight_.device).float())
        self.weight_, self.scale_ = self._tune(z, y, k_old)
        return self

    def _tune(self, z: torch.Tensor, y: torch.Tensor, k_old: int):
        """Full-batch SGD on the rows (the new ones, or all) and, with old="free", on s; returns (rows, s)."""
        old0 = self.weight_[:k_old].clone()
        old = old0.clone().requires_grad_(self.old != "frozen")
        new = self.weight_[k_old:].clone().requires_grad_(True)
        s = torch.tensor(self.scale_, device=z.device, requires_grad=self.old == "free")
        rows = [p for p in (old, new) if p.requires_grad]
        opt = torch.optim.SGD([{"params": rows, "weight_decay": self.wd},
                               {"params": [s] if s.requires_grad else [], "weight_decay": 0.0}],
                              lr=self.lr, momentum=self.momentum)
        with torch.enable_grad():
            for _ in range(self.steps):
                loss = F.cross_entropy(s * z @ l2_normalise(torch.cat([old, new])).t(), y)
                if self.old == "l2":
                    loss = loss + self.l2 / 2 * (old - old0).pow(2).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        kept = old0 if self.old == "frozen" else l2_normalise(old.detach())  # frozen rows bit for bit
        return torch.cat([kept, l2_normalise(new.detach())]), float(s.detach())
