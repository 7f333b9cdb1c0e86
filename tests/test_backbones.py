"""Backbone shapes and sizes against the H&G definitions; the cosine classifier's closed form."""
import pytest
import torch
import torch.nn.functional as F

from lowshot.backbones import BACKBONES, build_model
from lowshot.backbones.classifiers import CosineClassifier

# trunk parameter counts of the H&G definitions (reference §3), ImageNet stem, 3-channel input
HG_TRUNK_PARAMS = {"resnet10": 4.906e6, "resnet18": 11.177e6, "resnet34": 21.285e6, "resnet50": 23.504e6,
                   "resnet101": 42.501e6}
FEATURE_DIMS = {"resnet10": 512, "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


@pytest.mark.parametrize("name", sorted(HG_TRUNK_PARAMS))
def test_trunk_matches_hg_definition(name):
    trunk = BACKBONES.create(name)
    assert trunk.num_features == FEATURE_DIMS[name]
    assert sum(p.numel() for p in trunk.parameters()) == pytest.approx(HG_TRUNK_PARAMS[name], rel=1e-3)


@pytest.mark.parametrize("stem,size", [("small", 32), ("cifar", 16), ("imagenet", 64)])
def test_forward_returns_scores_and_nonnegative_features(stem, size):
    model = build_model("resnet18", "linear", num_classes=7, in_channels=1, width=0.25, stem=stem).eval()
    scores, feats = model(torch.randn(3, 1, size, size))
    assert scores.shape == (3, 7) and feats.shape == (3, model.trunk.num_features) == (3, 128)
    assert (feats >= 0).all()  # post-ReLU average pool, as in H&G


def test_cosine_logits_are_scale_times_cosine():
    clf = CosineClassifier(8, 5)
    with torch.no_grad():
        clf.scale.fill_(3.7)
    x = torch.randn(4, 8)
    expected = 3.7 * torch.stack([F.cosine_similarity(x, w[None].expand_as(x), dim=1) for w in clf.weight]).t()
    assert torch.allclose(clf(x), expected, atol=1e-6)
    assert torch.allclose(clf(5 * x), clf(x), atol=1e-6)  # invariant to feature scale


def test_unknown_backbone_lists_choices():
    with pytest.raises(Exception, match="choose one of: .*resnet10"):
        BACKBONES.get("resnet11")
