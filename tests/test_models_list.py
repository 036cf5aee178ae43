"""list_models with timm's glob filters, skip_init, and ``python -m minise.models``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from minise import models
from minise.models.__main__ import main, parameter_count
from minise.nn import init


def test_list_models_filters_with_globs_as_timm() -> None:
    every = models.list_models()
    se = models.list_models("se_*")
    assert se == [n for n in every if n.startswith("se_")] and len(se) == 11
    assert models.list_models("*resnet5?") == ["resnet56", "se_resnet56", "resnet50", "se_resnet50"]
    assert models.list_models(["resnet1*", "*resnext*"]) == [
        "resnet110",
        "resnet164",
        "resnet18",
        "resnet101",
        "resnext50_32x4d",
        "se_resnext50_32x4d",
    ]
    assert models.list_models("se_*", family="cifar", exclude_filters="*1??") == [
        "se_resnet20",
        "se_resnet32",
        "se_resnet44",
        "se_resnet56",
    ]
    assert models.list_models("SE_*") == []  # case-sensitive
    assert models.list_models("") == every


def test_skip_init_builds_the_same_shapes_without_drawing() -> None:
    drawn = models.create("se_resnet20")
    with init.skip_init():
        skipped = models.create("se_resnet20")
    assert init._draw  # restored
    for (name, a), (_, b) in zip(drawn.named_parameters(), skipped.named_parameters(), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
    conv = skipped.conv1.weight.numpy()
    assert not conv.any() and drawn.conv1.weight.numpy().any()
    np.testing.assert_array_equal(skipped.bn1.weight.numpy(), 1.0)  # constants stay what they are


@pytest.mark.parametrize("name", ["se_resnet20", "resnet164", "se_resnet50", "se_resnext50_32x4d"])
def test_parameter_count_equals_the_built_models(name: str) -> None:
    assert parameter_count(name) == models.create(name).num_parameters()


def test_cli_prints_names_with_parameter_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["se_resnet2*", "se_resnet50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "family", "parameters"]
    assert [line.split()[0] for line in lines[1:]] == ["se_resnet20", "se_resnet50"]
    assert lines[1].split()[1:] == ["cifar", f"{models.create('se_resnet20').num_parameters():,}"]
    assert main(["nothing*"]) == 1
    assert "no model matches 'nothing*'" in capsys.readouterr().err


def test_python_m_minise_models_lists_every_model() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "minise.models", "--family", "imagenet"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 + len(models.list_models(family="imagenet"))
    assert "25,557,032" in done.stdout  # resnet50, as torchvision counts it
