"""Training objectives: how base-class training images become a loss (`lowshot train --objective`).

An objective chooses the batches of an epoch and turns a batch's model outputs into a loss:

- `ce` — softmax cross-entropy of the classifier's scores on shuffled batches (H&G; the default,
  unchanged: same batches, same loss, same numbers);
- `protonet` — prototypical networks' episodic loss (`lowshot/objectives/protonet.py`);
- `magnet` — the Magnet loss on clusters of the training set's embeddings (`magnet.py`);
- `repmet` — RepMet's loss on representatives learned with the embedding (`repmet.py`).

The three metric objectives train the backbone's pooled features (the `features` stage's rows)
and never the classifier, so `lowshot features` stores no classifier rows for them and the heads
that need those rows (`imprint`, `imprint_ft`, `rand_ft`, `raw_imprint`) do not apply. They train
in one process; `protonet` and `magnet` draw their batches from an in-memory data set (glyphs,
CIFAR-100). An epoch sees about as many images as one of `ce`, and the base-class accuracy of the
(untrained) classifier is not logged.
"""
from lowshot.objectives.base import Batch, CrossEntropy, Episodic, GroupSampler, OBJECTIVES, Objective, base_positions  # noqa: F401

from lowshot.objectives import magnet, protonet, repmet  # noqa: E402,F401  (register them)
