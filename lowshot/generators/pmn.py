"""Wang et al.'s meta-learned hallucinator G(x, z) (plug-in `pmn`).

Wang, Girshick, Hebert & Hariharan, "Low-shot Learning from Imaginary Data", CVPR 2018 (arXiv
1801.05401). G maps a seed example x and a noise vector z to a new example of x's class; it is
trained end to end with prototype matching networks by `lowshot train-pmn`
(`lowshot.heads.pmn_hallucinator`), so it learns to make examples that help the classifier, not
realistic ones. This plug-in lets any head (e.g. `logreg`) train on G's output, like the analogy
generator; its model is the hallucinator of the `pmn` artefact.
"""
from __future__ import annotations

import torch

from lowshot.generators.base import GENERATORS, GeneratorPlugin
from lowshot.heads.maths import plan_new_rows
from lowshot.heads.pmn_hallucinator.model import Hallucinator, from_saved


def init(saved, dim: int, base_rows) -> Hallucinator:
    """The hallucinator of what `lowshot train-pmn` saved; it must take `dim`-dimensional features."""
    return from_saved(saved, dim).hallucinator.eval()


@torch.no_grad()
def generate(feats: torch.Tensor, labels: torch.Tensor, state: Hallucinator, max_per_label: int, seed: int):
    """Real rows first (unchanged), then M − m rows G(seed, z) for each label with m < M real rows.

    Args:
        feats: (n, d); labels: (n,). Seeds are uniform among a label's real rows; z ~ N(0, I).
    Returns:
        (feats, labels) of shapes (n + new, d) and (n + new,).
    """
    gen = torch.Generator().manual_seed(int(seed))
    rows, new_labels = plan_new_rows(labels, max_per_label, gen)
    new = state.to(feats.device).hallucinate(feats[rows].float(), gen).to(feats.dtype)
    return torch.cat([feats, new]), torch.cat([labels, new_labels])


GENERATORS.register("pmn")(GeneratorPlugin("pmn", init, generate))
