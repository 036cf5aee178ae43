"""minise: a from-scratch deep-learning engine for learning Squeeze-and-Excitation networks.

    import minise
    import minise.functional as F
    x = minise.tensor([[1.0, 2.0]], requires_grad=True)
    y = F.sigmoid(x).sum()
    y.backward()
    x.grad

The public surface: Tensor, tensor, no_grad, set_backend, use_backend, gradcheck, manual_seed;
PyTorch's tensor makers zeros, ones, randn, arange, from_numpy, cat, stack; save and load (pickle-free).
"""

from minise import backend
from minise.autograd import enable_grad, is_grad_enabled, no_grad
from minise.backend import BackendUnavailableError, get_backend, set_backend, use_backend
from minise.creation import arange, from_numpy, ones, randn, zeros
from minise.functional.shape import cat, stack
from minise.gradcheck import GradcheckError, GradcheckReport, gradcheck
from minise.serialization import load, save
from minise.tensor import Tensor, tensor

__version__ = "0.1.0"


def manual_seed(seed: int) -> None:
    """Seed initialisation and dropout on both backends (as ``torch.manual_seed``)."""
    backend.manual_seed(seed)


__all__ = [
    "BackendUnavailableError",
    "GradcheckError",
    "GradcheckReport",
    "Tensor",
    "arange",
    "cat",
    "enable_grad",
    "from_numpy",
    "get_backend",
    "gradcheck",
    "is_grad_enabled",
    "load",
    "manual_seed",
    "no_grad",
    "ones",
    "randn",
    "save",
    "set_backend",
    "stack",
    "tensor",
    "use_backend",
    "zeros",
]
