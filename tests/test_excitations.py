"""python -m minise.excitations: the hooks record what each SE block computes (held to NumPy), the
class-specificity measures tell class-specific gates from shuffled ones, and the command runs on a
tiny trained `shapes` checkpoint, writing Figs. 6 and 7 and the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import minise
from minise import excitations as ex
from minise import models, train
from minise.nn import SEBlock


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-a))


def test_recorded_gates_are_the_blocks_excitation_and_hooks_come_off() -> None:
    minise.manual_seed(0)
    model = models.se_resnet20(dtype=np.float64, min_channels=2)
    x = np.random.default_rng(0).standard_normal((6, 3, 16, 16))
    y = np.arange(6) % 3
    inputs: dict[str, np.ndarray] = {}
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, SEBlock)}
    handles = [
        b.register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0].numpy())) for n, b in blocks.items()
    ]
    E, labels = ex.record_excitations(model, [(x[:4], y[:4]), (x[4:], y[4:])])
    for h in handles:
        h.remove()
    np.testing.assert_array_equal(labels, y)
    assert len(E) == 9 and all(E[n].shape == (6, blocks[n].channels) for n in E)
    for name in ("layer1.0.se", "layer3.2.se"):  # lesson 8's formula in NumPy, on the last batch's input
        b, s = blocks[name], inputs[name].mean(axis=(2, 3))
        h = np.maximum(s @ b.fc1.weight.data.T + b.fc1.bias.data, 0)
        np.testing.assert_allclose(E[name][4:], _sigmoid(h @ b.fc2.weight.data.T + b.fc2.bias.data), rtol=1e-10)
    assert all(not b._forward_hooks for b in blocks.values())  # the recording's hooks were removed
    assert ex.last_blocks_of_stages(model, list(E)) == ["layer1.2.se", "layer2.2.se", "layer3.2.se"]


def test_nosqueeze_gates_are_averaged_over_the_map() -> None:
    model = models.se_resnet20(squeeze="none")
    E, _ = ex.record_excitations(model, [(np.zeros((2, 3, 8, 8), np.float32) + 0.5, np.array([0, 1]))])
    assert E["layer2.1.se"].shape == (2, 32)


def test_specificity_tells_class_specific_gates_from_shuffled_ones() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 40)
    centres = rng.uniform(0.2, 0.8, (5, 16))
    specific = centres[labels] + rng.normal(0, 0.05, (200, 16))
    s = ex.specificity(specific, labels)
    assert s["times_chance"] > 3 and s["eta2"] > 0.8 and s["eta2_shuffled"] < 0.1
    # planted mistake: the same gates, labels scrambled - no class information left
    scrambled = ex.specificity(specific, rng.permutation(labels))
    assert 0.7 < scrambled["times_chance"] < 1.3 and scrambled["eta2"] < 0.1
    # gates that never vary: 0, not a division by zero
    assert ex.class_specificity(np.full((10, 4), 0.5), np.arange(10) % 2)[2:] == (0.0, 0.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("exc") / "run"
    argv = ["--dataset", "shapes", "--train-images", "32", "--test-images", "32", "--batch-size", "16",
            "--epochs", "1", "--model", "se_resnet20", "--out", str(run), "--no-progress"]  # fmt: skip
    assert train.main(argv) == 0
    return run / "last.npz"


def test_command_writes_figures_and_json(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exc"
    argv = ["--checkpoint", str(checkpoint), "--test-images", "40", "--classes", "circle,3", "--shuffles", "5"]
    assert ex.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layer3.2.se" in printed and "x chance" in printed
    result = json.loads((out / "excitations.json").read_text())
    assert result["images"] == 40 and result["fig6_classes"] == [0, 3]
    assert result["fig6_blocks"] == ["layer1.2.se", "layer2.2.se", "layer3.2.se"]
    assert set(result["specificity"]) == {f"layer{s}.{b}.se" for s in (1, 2, 3) for b in range(3)}
    assert len(result["mean_all"]["layer3.2.se"]) == 64
    assert (out / "fig6.png").stat().st_size > 0 and (out / "fig7.png").stat().st_size > 0


def test_bad_input_is_one_line(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ex.main(["--checkpoint", str(checkpoint), "--test-images", "20", "--classes", "dodecahedron",
                    "--out", str(tmp_path)]) == 2  # fmt: skip
    assert ex.main(["--checkpoint", str(tmp_path / "missing.npz")]) == 2
    assert ex.main(["--pretrained", "x.safetensors"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("minise.excitations: ") for line in err)
    assert "dodecahedron" in err[0] and "does not exist" in err[1] and "--model" in err[2]


def test_pretrained_timm_weights_instead_of_a_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("safetensors", reason="safetensors is not installed (pip install 'minise[weights]')")
    minise.manual_seed(0)
    path = models.save_timm(models.se_resnet18(min_channels=8), tmp_path / "se18.safetensors")
    argv = ["--pretrained", str(path), "--model", "se_resnet18", "--dataset", "shapes", "--test-images", "20"]
    assert ex.main([*argv, "--shuffles", "2", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "excitations.json").read_text())
    assert result["model"] == "se_resnet18" and len(result["specificity"]) == 8
    assert result["fig6_blocks"] == [f"layer{s}.1.se" for s in (1, 2, 3, 4)]
