"""``python -m minise.models [PATTERN ...]``: every model name ``create`` accepts, with its parameter
count (default options, 10 classes for CIFAR models and 1000 for ImageNet ones), as timm's
``list_models`` with globs: ``python -m minise.models "se_*"``.

The models are built inside :func:`minise.nn.init.skip_init`, so no random weight is drawn: listing all
22 takes about half a second instead of about 15 (se_resnet101 alone draws 49 M weights).
"""

from __future__ import annotations

import argparse
import sys

from minise.models.registry import FAMILIES, create, list_models, model_family
from minise.nn import init


def parameter_count(name: str) -> int:
    """The number of parameters of model ``name`` with its default options, without drawing weights."""
    with init.skip_init():
        return create(name).num_parameters()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minise.models",
        description="List the models minise.models.create accepts, with their parameter counts.",
    )
    parser.add_argument("patterns", nargs="*", help='shell-style patterns, e.g. "se_*" (default: every model)')
    parser.add_argument("--family", choices=FAMILIES, help="only CIFAR (32x32) or ImageNet (224x224) models")
    args = parser.parse_args(argv)
    names = list_models(args.patterns, family=args.family)
    if not names:
        print(f"no model matches {' '.join(args.patterns)!r} - try: python -m minise.models", file=sys.stderr)
        return 1
    width = max(len(n) for n in names)
    print(f"{'model':<{width}}  {'family':<8}  {'parameters':>12}")
    for name in names:
        print(f"{name:<{width}}  {model_family(name):<8}  {parameter_count(name):>12,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
