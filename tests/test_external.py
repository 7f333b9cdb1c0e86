"""Any representation: timm and torchvision models from a local weights file through
features → benchmark → report on the glyph set, with one-line errors for bad input."""
import json
import sys

import h5py
import pytest
import torch
from conftest import TINY_GLYPHS
from synthetic_cli import error_line, invoke

from lowshot.backbones.external import build_external
from lowshot.io.fingerprint import file_digest

timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install 'lowshot[timm]'")
SMALL = ("--set", f"dataset_args={json.dumps(TINY_GLYPHS)}", "--set", 'preprocess={"image_size": 32}')


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory):
    """Random weights of a tiny timm model (safetensors) and of a torchvision ResNet-18 (torch.save)."""
    import torchvision
    from safetensors.torch import save_file
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    save_file(timm.create_model("test_resnet", num_classes=5).state_dict(), folder / "test_resnet.safetensors")
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), folder / "resnet18.pt")
    return folder


@pytest.fixture
def weights(tiny_project, weight_files):
    """The tiny glyph project, with the weight files linked into it."""
    for f in weight_files.iterdir():
        (tiny_project / f.name).symlink_to(f)
    return tiny_project


@pytest.mark.parametrize("spec,file,heads", [("timm:test_resnet", "test_resnet.safetensors", "protonet,cosine_ncm"),
                                             ("torchvision:resnet18", "resnet18.pt", "logreg")])
def test_features_benchmark_report_through_the_cli(weights, spec, file, heads):
    run = f"runs/{spec.split(':')[0]}"
    out = invoke("features", "--run", run, "--backbone", spec, "--weights", file, *SMALL)
    assert out.exit_code == 0, out.output
    with h5py.File(f"{run}/features/train.hdf5") as f:
        assert f.attrs["model"] == spec and "classifier_weight" not in f
        assert f.attrs["weights_digest"] == file_digest(file)
        assert json.loads(f.attrs["preprocessing"])["image_size"] == 32
    again = invoke("features", "--run", run, "--backbone", spec, "--weights", file, *SMALL)
    assert "up to date" in again.output
    bench = invoke("benchmark", "--run", run, "--heads", heads, "--n", "1", "--expid", "1")
    assert bench.exit_code == 0 and f"{len(heads.split(','))} new result files" in bench.output
    assert invoke("report", f"{run}/results", "--no-plot").exit_code == 0
    line = error_line(invoke("benchmark", "--run", run, "--heads", "imprint", "--n", "1", "--expid", "1"))
    assert "'imprint' needs the representation's trained classifier" in line


def test_loaded_weights_give_the_library_model_features(weights):
    from safetensors.torch import load_file
    reference = timm.create_model("test_resnet", num_classes=0)
    reference.load_state_dict({k: v for k, v in load_file("test_resnet.safetensors").items() if not k.startswith("fc.")})
    trunk = build_external("timm:test_resnet", "test_resnet.safetensors", False, {}, from_memory=False)
    x = torch.randn(2, 3, 64, 64)
    assert trunk.num_features == 96
    torch.testing.assert_close(trunk.eval().forward_features(x), reference.eval()(x))


@pytest.mark.parametrize("args,expected", [
    (("--backbone", "timm:test_resnet", "--weights", "resnet18.pt"),
     "resnet18.pt: is not a weights file of timm:test_resnet: "),
    (("--backbone", "torchvision:resnet18", "--weights", "test_resnet.safetensors"),
     "is not a weights file of torchvision:resnet18"),
    (("--backbone", "timm:test_resnet"), "needs --weights FILE (nothing is downloaded at run time"),
    (("--backbone", "timm:test_resnet", "--weights", "nope.pt"), "nope.pt: file not found"),
    (("--backbone", "timm:no_such_model", "--random-init"), "Unknown model"),
    (("--backbone", "resnet18", "--random-init"), "timm:<model name> or torchvision:<model name>"),
])
def test_bad_external_model_is_one_line(weights, args, expected):
    assert expected in error_line(invoke("features", "--run", "runs/bad", *args, *SMALL))


def test_missing_timm_says_how_to_install(weights, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    line = error_line(invoke("features", "--run", "runs/bad", "--backbone", "timm:test_resnet", "--random-init", *SMALL))
    assert "pip install 'lowshot[timm]'" in line
