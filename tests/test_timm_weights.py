"""Weights shared with timm: the state-dict mapping (refusals name the key), the .safetensors round
trip, hub names downloaded from a local HTTP server with a pinned size and SHA-256, and - where timm is
installed (its own venv, see the README) - the same logits as timm for every mapped architecture."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import Server

import minise
from minise import models
from minise import timm_weights as tw
from minise.nn import BatchNorm2d
from minise.tensor import Tensor


def _randomized(model: models.ResNet) -> models.ResNet:
    """Random batch-norm statistics and affine parameters too, so that eval mode checks them (fresh
    ones are 0 and 1)."""
    rng = np.random.default_rng(0)
    for name, b in model.named_buffers():
        b[...] = rng.uniform(0.5, 2.0, b.shape) if name.endswith("running_var") else rng.normal(0, 0.1, b.shape)
    for m in model.modules():
        if isinstance(m, BatchNorm2d):
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = rng.normal(0, 0.1, m.bias.shape)
    return model


def test_timm_form_differs_only_in_se_shapes_and_bn_counters() -> None:
    model = models.se_resnet18(num_classes=7, min_channels=8)
    timm_state = tw.to_timm_state_dict(model)
    assert timm_state["layer1.0.se.fc1.weight"].shape == (8, 64, 1, 1)
    assert timm_state["bn1.num_batches_tracked"].dtype == np.int64
    assert set(timm_state) - set(model.state_dict()) == {k for k in timm_state if k.endswith("num_batches_tracked")}
    back = tw.from_timm_state_dict(model, timm_state)
    assert set(back) == set(model.state_dict())
    np.testing.assert_array_equal(back["layer1.0.se.fc1.weight"], model.layer1[0].se.fc1.weight.data)


def test_missing_extra_and_wrong_shaped_keys_are_refused_in_one_line() -> None:
    model = models.resnet18(num_classes=5)
    good = tw.to_timm_state_dict(model)
    missing = {k: v for k, v in good.items() if k != "layer3.1.bn2.running_mean"}
    with pytest.raises(tw.WeightsError, match=r"no 'layer3.1.bn2.running_mean' \(1 key\(s\) missing\)"):
        tw.from_timm_state_dict(model, missing)
    with pytest.raises(tw.WeightsError, match=r"hold 'layer1.0.se.fc1.weight'"):
        tw.from_timm_state_dict(model, {**good, "layer1.0.se.fc1.weight": np.zeros((4, 64, 1, 1))})
    with pytest.raises(tw.WeightsError, match=r"'fc.weight' has shape \(1000, 512\) in the weights but \(5, 512\)"):
        tw.from_timm_state_dict(model, {**good, "fc.weight": np.zeros((1000, 512)), "fc.bias": np.zeros(1000)})
    # seresnet18's rounded SE width against a minise model built without min_channels=8
    plain_r16 = models.se_resnet18()
    with pytest.raises(tw.WeightsError, match="layer1.0.se.fc1.weight.*min_channels") as info:
        tw.from_timm_state_dict(plain_r16, tw.to_timm_state_dict(models.se_resnet18(min_channels=8)))
    assert "\n" not in str(info.value)


def test_safetensors_round_trip_and_create_pretrained(tmp_path: Path) -> None:
    pytest.importorskip("safetensors", reason="safetensors is not installed (pip install 'minise[weights]')")
    minise.manual_seed(1)
    source = _randomized(models.se_resnet18(num_classes=10, min_channels=8))
    path = tw.save_timm(source, tmp_path / "w" / "se18.safetensors")
    assert path.is_file() and not list(path.parent.glob("*.part"))
    minise.manual_seed(2)
    loaded = models.create("se_resnet18", num_classes=10, pretrained=str(path))  # min_channels=8 by default
    for (k, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=k)
    x = Tensor(np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    source.eval(), loaded.eval()
    np.testing.assert_array_equal(source(x).numpy(), loaded(x).numpy())
    with pytest.raises(ValueError, match="has no timm twin"):
        models.create("se_resnet20", pretrained=str(path))
    with pytest.raises(tw.WeightsError, match="not a file"):
        models.load_timm(models.resnet18(), tmp_path / "nothing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(tw.WeightsError, match="not a readable .safetensors"):
        models.load_timm(models.resnet18(), tmp_path / "bad.safetensors")


# --------------------------------------------------------------------------------------------------
# hub names: pinned size and SHA-256, against a local server
# --------------------------------------------------------------------------------------------------
def test_unverified_hub_entries_refuse_to_download(monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(not e.verified and e.sha256 is None for e in tw.HUB_WEIGHTS.values())  # said in the docs
    with pytest.raises(tw.WeightsError, match="no verified size and SHA-256 pinned.*pass its path"):
        models.create("se_resnet50", pretrained="timm/seresnet50.a1_in1k")
    with pytest.raises(tw.WeightsError, match="unknown weights"):
        tw.download_weights("timm/nope")


def test_hub_download_checks_size_and_sha256(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("safetensors", reason="safetensors is not installed (pip install 'minise[weights]')")
    source = models.resnet18(num_classes=3)
    body = tw.save_timm(source, tmp_path / "src.safetensors").read_bytes()
    server.routes["/r18.safetensors"] = (body, None)
    good = tw.HubWeights(
        server.url("/r18.safetensors"), "resnet18", len(body), hashlib.sha256(body).hexdigest(), verified=True
    )
    monkeypatch.setitem(tw.HUB_WEIGHTS, "test/r18", good)
    monkeypatch.setenv("MINISE_DATA", str(tmp_path / "cache"))
    model = models.create("resnet18", num_classes=3, pretrained="test/r18")
    np.testing.assert_array_equal(model.fc.weight.data, source.fc.weight.data)
    cached = tmp_path / "cache" / "weights" / "test--r18.safetensors"
    assert cached.is_file() and len(server.requests) == 1
    models.create("resnet18", num_classes=3, pretrained="test/r18")
    assert len(server.requests) == 1  # the checked file in the cache is used again
    # a file that does not hash to the pinned value is refused and removed
    cached.unlink()
    monkeypatch.setitem(tw.HUB_WEIGHTS, "test/r18", tw.HubWeights(good.url, "resnet18", len(body), "0" * 64, True))
    with pytest.raises(tw.WeightsError, match="not the pinned"):
        tw.download_weights("test/r18")
    assert not list((tmp_path / "cache" / "weights").iterdir())


# --------------------------------------------------------------------------------------------------
# the same logits as timm (run in a venv with timm: see the README)
# --------------------------------------------------------------------------------------------------
def _timm_net(arch: str, tmp_path: Path) -> tuple[object, Path, np.ndarray, np.ndarray]:
    """timm's ``arch`` with random weights and BN statistics, saved; a batch and timm's logits on it."""
    timm = pytest.importorskip("timm", reason="timm is not installed (it needs torchvision; see the README)")
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    net = timm.create_model(arch, pretrained=False, num_classes=10).eval()
    with torch.no_grad():  # timm starts every branch's last BN at gamma = 0: randomize every BN
        for n, b in net.named_buffers():
            if n.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif n.endswith("running_mean"):
                b.normal_(0, 0.1)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    path = tmp_path / f"{arch}.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    return net, path, x, expected


def _same(got: np.ndarray, expected: np.ndarray) -> bool:
    """Equal logits, to 1e-4 of the largest one (float32 through 50-100 layers)."""
    return bool(np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max())


@pytest.mark.timm
@pytest.mark.slow  # 15-30 s per architecture on 2 busy cores; runs only where timm is installed
@pytest.mark.parametrize("name", list(tw.TIMM_ARCHS))
def test_same_logits_as_timm_both_ways(name: str, tmp_path: Path) -> None:
    arch = tw.TIMM_ARCHS[name][0]
    _, path, x, expected = _timm_net(arch, tmp_path)
    import timm  # noqa: PLC0415  (importable: _timm_net skipped otherwise)
    import torch  # noqa: PLC0415
    from safetensors import torch as safetensors_torch  # noqa: PLC0415

    model = models.create(name, num_classes=10, pretrained=str(path)).eval()
    assert _same(model(Tensor(x)).numpy(), expected), name
    # and back: minise's weights, written by save_timm, load strictly into timm's architecture
    minise.manual_seed(3)
    ours = _randomized(models.create(name, num_classes=10, **tw.TIMM_ARCHS[name][1])).eval()
    back = tw.save_timm(ours, tmp_path / "back.safetensors")
    net2 = timm.create_model(arch, pretrained=False, num_classes=10).eval()
    net2.load_state_dict(safetensors_torch.load_file(str(back)), strict=True)
    with torch.no_grad():
        theirs = net2(torch.from_numpy(x)).numpy()
    assert _same(ours(Tensor(x)).numpy(), theirs), name


@pytest.mark.timm
def test_the_logit_comparison_tells_a_different_layout_apart(tmp_path: Path) -> None:
    # planted mistake: the same weights in the Caffe layout (stride on the first 1x1 convolution)
    _, path, x, expected = _timm_net("resnet50", tmp_path)
    caffe = models.create("resnet50", num_classes=10, pretrained=str(path), stride_in_1x1=True).eval()
    assert not _same(caffe(Tensor(x)).numpy(), expected)
    right = models.create("resnet50", num_classes=10, pretrained=str(path)).eval()
    assert _same(right(Tensor(x)).numpy(), expected)
