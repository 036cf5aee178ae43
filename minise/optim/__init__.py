"""minise.optim: SGD with momentum and learning-rate schedules, as torch.optim.

from minise import optim
opt = optim.SGD(optim.param_groups_no_decay(model, 1e-4), lr=0.1, momentum=0.9)
sched = optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)
"""

from minise.optim import lr_scheduler
from minise.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LinearWarmup,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
    StepLR,
)
from minise.optim.optimizer import Optimizer
from minise.optim.sgd import SGD, param_groups_no_decay

__all__ = [
    "SGD",
    "CosineAnnealingLR",
    "LRScheduler",
    "LinearLR",
    "LinearWarmup",
    "MultiStepLR",
    "Optimizer",
    "SequentialLR",
    "StepLR",
    "lr_scheduler",
    "param_groups_no_decay",
]
