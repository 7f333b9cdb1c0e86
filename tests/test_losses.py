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


def _per_example_grad_norms(feats, w, labels, create_graph=True):
    """‖∂ℓ_i/∂W‖²_F for each example, by autograd (double-differentiable), shape (N,)."""
    out = []
    for i in range(len(feats)):
        loss = F.cross_entropy(feats[i:i + 1] @ w.t(), labels[i:i + 1])
        (g,) = torch.autograd.grad(loss, w, create_graph=create_graph)
        out.append(g.pow(2).sum())
    return torch.stack(out)


def _batch_grad_norm(feats, w, labels):
    (g,) = torch.autograd.grad(F.cross_entropy(feats @ w.t(), labels), w, create_graph=True)
    return g.pow(2).sum()


_DIRECT = {
    "sgm": lambda f, w, y: _per_example_grad_norms(f, w, y).mean(),
    "batchsgm": _batch_grad_norm,
    "l2": lambda f, w, y: 0.5 * f.pow(2).sum(1).mean(),
}


@pytest.mark.parametrize("name", sorted(_DIRECT))
def test_aux_loss_gradients_equal_the_direct_definition(name):
    """d(loss)/dφ and d(loss)/dW equal those of the definition computed by double backprop (H&G §5).

    The definition is built from autograd's own CE gradients w.r.t. W, so a wrong sign, a missing
    softmax path, a 1/N vs 1/N² or a detached p would all change these gradients.
    """
    feats, weight, labels = _batch(n=5, d=3, c=4, seed=3)
    grads = []
    for fn in (AUX_LOSSES.get(name), None):
        f, w = feats.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        loss = fn(f @ w.t(), f, labels) if fn else _DIRECT[name](f, w, labels)
        grads.append(torch.autograd.grad(loss, (f, w), allow_unused=True))
    (gf, gw), (ef, ew) = grads
    assert torch.allclose(gf, ef, atol=1e-12)
    assert (gw is None and (ew is None or ew.abs().max() == 0)) or torch.allclose(gw, ew, atol=1e-12)


def test_sgm_hand_computed_case():
    """One example, two classes, W = 0: p = (½, ½), e_y − p = (½, −½), ‖·‖² = ½, ‖φ‖² = 25 -> 12.5."""
    feats = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    scores, labels = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0])
    assert AUX_LOSSES.get("sgm")(scores, feats, labels).item() == pytest.approx(12.5)
    assert AUX_LOSSES.get("batchsgm")(scores, feats, labels).item() == pytest.approx(12.5)
    assert AUX_LOSSES.get("l2")(scores, feats, labels).item() == pytest.approx(12.5)
