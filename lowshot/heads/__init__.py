"""Low-shot heads: one registry; every head follows the same fit/scores contract.

A head is built from keyword hyper-parameters only (`HEADS.create(name, **params)`), then
`fit(feats, labels, task)` on the training set of one benchmark cell (all base rows of the
setup plus the novel shots, real and generated) and `scores(feats)` on test features.

Heads are pure computation: they see tensors, never a path or a file. A head with a trained model
names the run-folder artefact it needs (`artefact`, a key of `lowshot.run.ARTEFACTS`) and how to
build the model from what its training stage saved (`build_model`); the benchmark reads,
fingerprints and builds it once and hands it over as `task.model`.
"""
from lowshot.heads.base import BaseRows, HEADS, Head, Task  # noqa: F401

from lowshot.heads import (  # noqa: E402,F401  (register the heads)
    bd_cspn, cosine_ncm, imprint, imprint_ft, laplacian_shot, logreg, magnet, matching, pmn_hallucinator, protonet,
    pt_map, raw_imprint, repmet, tim, transductive_ft, weight_generator,
)
