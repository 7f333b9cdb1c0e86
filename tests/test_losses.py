"""The auxiliary losses equal the gradient norms they are defined from (autograd as reference)."""
import pytest
import torch
import torch.nn.functional as F

from lowshot.losses import AUX_LOSSES


def _batch(n=6, d=5, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=g, dtype=torch.float64)
    weight = torch.randn(c, d, generator=g, dtype=torch.float64)
    labels = torch.randint(c, (n,), generator=g)
    return feats, weight, labels


def test_sgm_is_mean_squared_per_example_gradient_norm():
    feats, weight, labels = _batch()
    norms = []
    for i in range(len(feats)):
        w = weight.clone().requires_grad_(True)
        F.cross_entropy((feats[i:i + 1] @ w.t()), labels[i:i + 1]).backward()
        norms.append(w.grad.pow(2).sum())
    expected = torch.stack(norms).mean()
    assert torch.allclose(AUX_LOSSES.get("sgm")(feats @ weight.t(), feats, labels), expected)


def test_batchsgm_is_squared_batch_gradient_norm():
    feats, weight, labels = _batch()
    w = weight.clone().requires_grad_(True)
    F.cross_entropy(feats @ w.t(), labels).backward()
    assert torch.allclose(AUX_LOSSES.get("batchsgm")(feats @ weight.t(), feats, labels), w.grad.pow(2).sum())


def test_l2_closed_form():
    feats, weight, labels = _batch()
    assert torch.allclose(AUX_LOSSES.get("l2")(feats @ weight.t(), feats, labels), feats.pow(2).sum() / (2 * len(feats)))


@pytest.mark.parametrize("name", ["sgm", "batchsgm"])
def test_softmax_is_not_detached(name):
    """Gradients flow through p into W, not only through ‖φ‖² (H&G: softmax not detached)."""
    feats, weight, labels = _batch()
    w = weight.clone().requires_grad_(True)
    AUX_LOSSES.get(name)(feats @ w.t(), feats, labels).backward()
    assert w.grad.abs().sum() > 0


@pytest.mark.parametrize("name", AUX_LOSSES.names())
def test_every_aux_loss_is_a_differentiable_scalar(name):
    feats, weight, labels = _batch()
    feats.requires_grad_(True)
    loss = AUX_LOSSES.get(name)(feats @ weight.t(), feats, labels)
    assert loss.shape == ()
    if name != "none":
        loss.backward()
        assert torch.isfinite(feats.grad).all()
