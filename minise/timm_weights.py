"""Weights shared with timm (and torchvision): read and write their ``.safetensors`` state dicts.

A file format, like :mod:`minise.checkpoint`: it works on host (NumPy) arrays, so it sits outside the
backend-agnostic packages (``models`` re-exports ``load_timm``, ``save_timm`` and ``TIMM_ARCHS``).

minise's ImageNet models use torchvision's module names, which timm's ResNet family keeps, so a
timm state dict maps onto a minise model key for key, with three differences in form:

* timm's SE block holds its two FC layers as 1x1 convolutions, ``se.fc1.weight`` (R, C, 1, 1);
  minise's are Linear layers, (R, C): the trailing 1 x 1 is dropped on reading, added on writing;
* PyTorch's batch norm counts its updates in ``num_batches_tracked``, which minise does not keep:
  dropped on reading, written as 0 (it only matters for ``momentum=None``, which neither uses);
* timm rounds the SE hidden width up to a multiple of 8: ``seresnet18``/``34`` have 8 hidden units
  in their first stage where ``C / 16`` is 4, so their minise twin is built with ``min_channels=8``.

Which timm architecture each minise model equals (same layers, same forward, same logits; the
equality is tested with timm itself, see tests/test_timm_weights.py):

==================== ===================== =============================================
minise                timm                  note
==================== ===================== =============================================
resnet18/34/50/101    resnet18/34/50/101     torchvision's ResNet (stride on the 3x3 conv)
resnext50_32x4d       resnext50_32x4d
se_resnet18/34        seresnet18/34          built with ``min_channels=8`` (timm's rounding)
se_resnet50/101       seresnet50/101
se_resnext50_32x4d    seresnext50_32x4d
==================== ===================== =============================================

Not mapped: timm's ``legacy_seresnet50`` / ``legacy_seresnext50_32x4d`` (Cadene's port of the
original Caffe SENets): their max pool uses ``ceil_mode=True`` without padding, which minise's
MaxPool2d does not offer, and their module names differ (``layer0``, ``se_module``, ``last_linear``).
Their layout otherwise is minise's ``stride_in_1x1=True``.

The ``.safetensors`` files are read and written with the ``safetensors`` package into NumPy, without
torch (``pip install "minise[weights]"``).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minise import backend
from minise.data.download import cache_dir
from minise.nn import BatchNorm2d, Linear, Module, SEBlock

# minise name -> (timm architecture, the minise options that make the two equal)
TIMM_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet18": ("resnet18", {}),
    "resnet34": ("resnet34", {}),
    "resnet50": ("resnet50", {}),
    "resnet101": ("resnet101", {}),
    "resnext50_32x4d": ("resnext50_32x4d", {}),
    "se_resnet18": ("seresnet18", {"min_channels": 8}),
    "se_resnet34": ("seresnet34", {"min_channels": 8}),
    "se_resnet50": ("seresnet50", {}),
    "se_resnet101": ("seresnet101", {}),
    "se_resnext50_32x4d": ("seresnext50_32x4d", {}),
}


class WeightsError(ValueError):
    """A weights file or name that cannot be used, said in one line."""


def _safetensors() -> Any:
    try:
        import safetensors.numpy as st  # noqa: PLC0415  (optional: only weights files need it)
    except ImportError:
        raise WeightsError(
            "reading or writing .safetensors needs the safetensors package - pip install 'minise[weights]'"
        ) from None
    return st


# --------------------------------------------------------------------------------------------------
# state dicts: timm <-> minise
# --------------------------------------------------------------------------------------------------
def _se_linear_names(model: Module) -> set[str]:
    """The dotted names of the FC weights of SE blocks that minise holds as (R, C) Linear weights."""
    names = set()
    for name, m in model.named_modules():
        if isinstance(m, SEBlock):
            for fc in ("fc1", "fc2"):
                if isinstance(getattr(m, fc), Linear):
                    names.add(f"{name}.{fc}.weight")
    return names


def _bn_names(model: Module) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, BatchNorm2d)}


def from_timm_state_dict(model: Module, state: dict[str, Any]) -> dict[str, np.ndarray]:
    """timm's state dict in minise's form for ``model``; WeightsError naming the first key that is
    missing, unexpected or of the wrong shape."""
    bns, se_fcs = _bn_names(model), _se_linear_names(model)
    own = model.state_dict()
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked" and module in bns:
            continue
        array = np.asarray(value)
        if key in se_fcs and array.ndim == 4 and array.shape[2:] == (1, 1):
            array = array[:, :, 0, 0]  # (R, C, 1, 1) 1x1 convolution -> (R, C) linear
        out[key] = array
    name = type(model).__name__
    missing = [k for k in own if k not in out]
    if missing:
        raise WeightsError(
            f"load_timm: the weights have no {missing[0]!r} ({len(missing)} key(s) missing) for this {name} - "
            "they were saved from another architecture; see minise.models.TIMM_ARCHS for the matching one"
        )
    extra = [k for k in out if k not in own]
    if extra:
        raise WeightsError(
            f"load_timm: the weights hold {extra[0]!r} ({len(extra)} unexpected key(s)), which this {name} lacks - "
            "they were saved from another architecture; see minise.models.TIMM_ARCHS for the matching one"
        )
    for k, target in own.items():
        if tuple(out[k].shape) != tuple(target.shape):
            raise WeightsError(
                f"load_timm: {k!r} has shape {tuple(out[k].shape)} in the weights but {tuple(target.shape)} in this "
                f"{name} - build the model with the options the weights need (e.g. num_classes, min_channels)"
            )
    return out


def to_timm_state_dict(model: Module) -> dict[str, np.ndarray]:
    """``model``'s state dict as timm names and shapes it (host arrays, float as the model's)."""
    se_fcs, bns = _se_linear_names(model), _bn_names(model)
    out: dict[str, np.ndarray] = {}
    for key, value in model.state_dict().items():
        array = np.ascontiguousarray(backend.to_host(value))
        out[key] = array[:, :, None, None] if key in se_fcs else array  # (R, C) -> (R, C, 1, 1)
        module, _, leaf = key.rpartition(".")
        if module in bns and leaf == "running_var":
            out[f"{module}.num_batches_tracked"] = np.zeros((), dtype=np.int64)
    return out


def load_timm(model: Module, path: str | Path) -> Module:
    """Copy the weights of a timm/torchvision ``.safetensors`` file into ``model`` (in place); returns it."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"load_timm: {path} is not a file - give the path of a .safetensors file")
    st = _safetensors()
    try:
        state = st.load_file(str(path))
    except Exception as e:  # the package raises its own error types for a damaged file
        raise WeightsError(f"load_timm: {path} is not a readable .safetensors file ({type(e).__name__}: {e})") from None
    model.load_state_dict(from_timm_state_dict(model, state))
    return model


def save_timm(model: Module, path: str | Path) -> Path:
    """Write ``model``'s weights as a ``.safetensors`` file that timm's matching architecture loads
    (``timm.create_model(arch, pretrained_cfg_overlay=dict(file=path))``, or torch's ``load_state_dict``)."""
    path = Path(path)
    st = _safetensors()
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(path.suffix + ".part")
    try:
        st.save_file(to_timm_state_dict(model), str(part), metadata={"format": "pt"})
        os.replace(part, path)  # atomic: the file is either absent or complete
    finally:
        part.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------------
# weights by name, from the hub, checked with a pinned size and SHA-256
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubWeights:
    """A weights file on the Hugging Face hub: its URL, the minise model it fits, and its pinned size
    and SHA-256. ``verified`` is False when the hash could not be looked up: such an entry refuses to
    download rather than trust an unchecked file."""

    url: str
    model: str
    size: int | None = None
    sha256: str | None = None
    verified: bool = False


def _hub(repo: str, model: str) -> HubWeights:
    return HubWeights(f"https://huggingface.co/{repo}/resolve/main/model.safetensors", model)


# The sizes and hashes of these files could not be fetched while this was written (no network): they are
# unverified and download_weights refuses them until someone pins them from the hub's file pages.
HUB_WEIGHTS: dict[str, HubWeights] = {
    "timm/resnet50.a1_in1k": _hub("timm/resnet50.a1_in1k", "resnet50"),
    "timm/seresnet50.a1_in1k": _hub("timm/seresnet50.a1_in1k", "se_resnet50"),
    "timm/seresnet50.ra2_in1k": _hub("timm/seresnet50.ra2_in1k", "se_resnet50"),
    "timm/seresnext50_32x4d.racm_in1k": _hub("timm/seresnext50_32x4d.racm_in1k", "se_resnext50_32x4d"),
}


def sha256sum(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def download_weights(name: str, root: str | Path | None = None) -> Path:
    """The local path of hub weights ``name`` (e.g. "timm/seresnet50.a1_in1k"), downloaded into
    ``root`` (default ``$MINISE_DATA/weights``) if missing, checked against the pinned size and SHA-256,
    and put in place only when both are right (a ``.part`` file otherwise, removed)."""
    if name not in HUB_WEIGHTS:
        raise WeightsError(f"unknown weights {name!r} - known names: {', '.join(HUB_WEIGHTS)}; or give a file path")
    entry = HUB_WEIGHTS[name]
    if entry.sha256 is None or entry.size is None or not entry.verified:
        raise WeightsError(
            f"weights {name!r} have no verified size and SHA-256 pinned in minise, so they are not downloaded - "
            f"fetch {entry.url} yourself and pass its path as pretrained="
        )
    dest = Path(root) if root is not None else cache_dir() / "weights"
    dest = dest / (name.replace("/", "--") + ".safetensors")
    if dest.is_file() and dest.stat().st_size == entry.size and sha256sum(dest) == entry.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(".safetensors.part")
    try:
        try:
            with urllib.request.urlopen(entry.url, timeout=60) as response, open(part, "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
        except (urllib.error.URLError, OSError) as e:
            raise WeightsError(
                f"download of {entry.url} failed ({type(e).__name__}: {e}) - check the network"
            ) from None
        got_size, got = part.stat().st_size, sha256sum(part)
        if got_size != entry.size or got != entry.sha256:
            raise WeightsError(
                f"{entry.url} gave {got_size} bytes with SHA-256 {got[:16]}..., not the pinned {entry.size} bytes "
                f"{entry.sha256[:16]}... - the file was removed; the hub file changed or the download was cut short"
            )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def resolve_pretrained(pretrained: str | Path) -> Path:
    """A file path as given, or the downloaded file of a hub name from :data:`HUB_WEIGHTS`."""
    if isinstance(pretrained, str) and pretrained in HUB_WEIGHTS:
        return download_weights(pretrained)
    return Path(pretrained)
