"""The ablations of the SENet paper as studies: which variants each trains, and the paper's numbers.

A study is a list of variants; the first is the baseline every other is compared with. A variant is
a name, the model (``None``: the study's SE model, ``--model``; ``"plain"``: the same network without
SE blocks, e.g. resnet20 for se_resnet20) and the training options that make it (``--placement pre``).
``paper`` holds the paper's own ImageNet top-1 / top-5 error (%) of the SE-ResNet-50 variant of that
name (Hu et al., TPAMI 2019, Tables 10-16; Table 2 for se-vs-plain), printed beside the measured
numbers for reference only: those are ResNet-50s trained for 100 epochs on ImageNet.

The paper's "SE_Stage_2/3/4" put SE blocks in ResNet-50's conv2_x, conv3_x and conv4_x alone; counted
from the first stage after the stem, as minise's ``se_stages`` counts, those are stages 1, 2 and 3
(the parameter counts confirm it: 25.6 M, 25.7 M, 26.4 M).

A study file lists one variant per line, ``NAME: TRAINING OPTIONS``, the first line the baseline, ``#``
starting a comment, e.g.::

    SE: --placement standard
    SE-PRE: --placement pre
    ResNet: --model plain
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Variant:
    """One arm of a study: ``name``, ``model`` (None: the study's SE model; "plain": without SE;
    otherwise a model name), extra training options, and the paper's ImageNet (top-1, top-5) error."""

    name: str
    options: tuple[str, ...] = ()
    model: str | None = None
    paper: tuple[float, float] | None = None


@dataclass(frozen=True)
class Study:
    """A named list of variants; ``variants[0]`` is the baseline."""

    name: str
    title: str
    variants: tuple[Variant, ...]
    source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def baseline(self) -> Variant:
        return self.variants[0]


SE = (22.28, 6.03)  # SE-ResNet-50 of the ablation tables (Tables 10-16 share it)
RESNET = (23.30, 6.55)  # ResNet-50 of the ablation tables

STUDIES: dict[str, Study] = {
    "reduction": Study(
        "reduction",
        "reduction ratio r",
        tuple(
            Variant(f"r = {r}", ("--reduction", str(r)), paper=p)
            for r, p in ((16, SE), (2, (22.29, 6.00)), (4, (22.25, 6.09)), (8, (22.26, 5.99)), (32, (22.72, 6.20)))
        ),
        "Table 10",
    ),
    "squeeze": Study(
        "squeeze",
        "squeeze operator",
        (Variant("Avg", ("--squeeze", "avg"), paper=SE), Variant("Max", ("--squeeze", "max"), paper=(22.57, 6.09))),
        "Table 11",
    ),
    "excitation": Study(
        "excitation",
        "excitation non-linearity",
        (
            Variant("Sigmoid", ("--gate", "sigmoid"), paper=SE),
            Variant("Tanh", ("--gate", "tanh"), paper=(23.00, 6.38)),
            Variant("ReLU", ("--gate", "relu"), paper=(23.47, 6.98)),
        ),
        "Table 12",
    ),
    "stages": Study(
        "stages",
        "SE blocks in one stage at a time",
        (
            Variant("ResNet", model="plain", paper=RESNET),
            Variant("SE_Stage_2", ("--se-stages", "1"), paper=(23.03, 6.48)),
            Variant("SE_Stage_3", ("--se-stages", "2"), paper=(23.04, 6.32)),
            Variant("SE_Stage_4", ("--se-stages", "3"), paper=(22.68, 6.22)),
            Variant("SE_All", paper=SE),
        ),
        "Table 13",
        ("the paper's Stage_2/3/4 are minise's se_stages 1/2/3 (the first three stages after the stem)",),
    ),
    "integration": Study(
        "integration",
        "where the SE block sits in the residual unit",
        (
            Variant("SE", ("--placement", "standard"), paper=SE),
            Variant("SE-PRE", ("--placement", "pre"), paper=(22.23, 6.00)),
            Variant("SE-POST", ("--placement", "post"), paper=(22.78, 6.35)),
            Variant("SE-Identity", ("--placement", "identity"), paper=(22.20, 6.15)),
        ),
        "Table 14",
    ),
    "se3x3": Study(
        "se3x3",
        "SE after the 3x3 convolution",
        (
            Variant("SE", ("--placement", "standard"), paper=SE),
            Variant("SE_3x3", ("--placement", "3x3"), paper=(22.48, 6.02)),
        ),
        "Table 15",
    ),
    "nosqueeze": Study(
        "nosqueeze",
        "the squeeze removed: 1x1 convolutions on the full map",
        (
            Variant("SE", ("--squeeze", "avg"), paper=SE),
            Variant("NoSqueeze", ("--squeeze", "none"), paper=(22.93, 6.39)),
            Variant("ResNet", model="plain", paper=RESNET),
        ),
        "Table 16",
    ),
    "se-vs-plain": Study(
        "se-vs-plain",
        "the network with and without SE blocks",
        (Variant("ResNet", model="plain", paper=(24.80, 7.48)), Variant("SE-ResNet", paper=(23.29, 6.62))),
        "Table 2 (ResNet-50, re-implementation)",
    ),
}


class StudyError(ValueError):
    """A study that cannot be read or run, said in one line."""


def plain_model(model: str) -> str:
    """The network without SE blocks: ``se_resnet20`` -> ``resnet20``."""
    if not model.startswith("se_"):
        raise StudyError(f"--model {model} has no SE blocks to remove - give an SE model, e.g. se_resnet20")
    return model[3:]


def read_study_file(path: str | Path) -> Study:
    """A study from a file of ``NAME: OPTIONS`` lines (see the module docstring); ``--model plain``
    names the study's model without SE, ``--model NAME`` any other model."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise StudyError(f"cannot read study file {path} ({type(e).__name__}: {e}) - check the path") from None
    variants: list[Variant] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, rest = line.partition(":")
        if not sep or not name.strip():
            raise StudyError(
                f"{path}:{number}: {raw.strip()!r} is not 'NAME: OPTIONS' - e.g. 'SE-PRE: --placement pre'"
            )
        try:
            options = shlex.split(rest)
        except ValueError as e:
            raise StudyError(f"{path}:{number}: cannot split the options ({e}) - check the quotes") from None
        model = None
        if "--model" in options:
            i = options.index("--model")
            if i + 1 >= len(options):
                raise StudyError(f"{path}:{number}: --model needs a name (or 'plain')")
            model = options[i + 1]
            options = options[:i] + options[i + 2 :]
        variants.append(Variant(name.strip(), tuple(options), model))
    names = [v.name for v in variants]
    if len(variants) < 2:
        raise StudyError(f"{path}: a study needs at least 2 variants (a baseline first), found {len(variants)}")
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: variant names must differ, got {names}")
    return Study(path.stem, f"variants from {path.name}", tuple(variants), str(path))


def get_study(name: str) -> Study:
    """A built-in study by name, or one read from the file ``name``."""
    if name in STUDIES:
        return STUDIES[name]
    if Path(name).is_file():
        return read_study_file(name)
    raise StudyError(f"unknown study {name!r} - use one of {', '.join(STUDIES)}, or a file listing variants")
