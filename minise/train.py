"""Train a (SE-)ResNet: ``python -m minise.train --dataset shapes --model se_resnet20``.

What a run does, in order: choose the backend, load the data, build the model, the optimiser (SGD
with momentum, weight decay off for BN and bias parameters) and the learning-rate schedule (warm-up,
then cosine or step decay, updated every iteration); then for each epoch train with a progress bar,
evaluate on the held-out set, append a line to ``metrics.jsonl``, write ``last.npz`` and (if the
accuracy improved) ``best.npz`` atomically, and redraw ``curves.png``.

Nothing is lost: Ctrl-C finishes the current step, saves ``last.npz`` with the exact position in the
epoch, and exits; ``--resume`` continues from it to exactly the result an uninterrupted run with the
same seed would have reached (the batches are a function of seed, epoch and index; the checkpoint
holds weights, momentum buffers, schedule, BN statistics and the RNG state). A loss that turns NaN or
infinite stops the run with the epoch and step, keeping the last good checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import minise
from minise import backend, data, models, optim
from minise import functional as F
from minise.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, split
from minise.evaluate import evaluate, model_from_checkpoint
from minise.nn import Module
from minise.plotting import plot_curves
from minise.progress import Progress
from minise.tensor import Tensor

SE_OPTIONS = ("reduction", "min_channels", "se_bias", "squeeze", "gate", "placement", "se_stages")
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


class TrainError(Exception):
    """A problem reported to the user in one line (exit status ``code``)."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2), not a usage block."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m minise.train",
        description="Train a (SE-)ResNet with minise.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="shapes", help=f"one of {', '.join(data.DATASETS)}")
    d.add_argument(
        "--data-dir", default=None, help="folder holding the data set (default: $MINISE_DATA or ~/.cache/minise)"
    )
    d.add_argument("--download", action="store_true", help="download the data set if it is missing")
    d.add_argument("--no-augment", action="store_true", help="no random crop and flip")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="se_resnet20", help="a name from minise.models.list_models()")
    m.add_argument("--reduction", type=int, default=None, help="SE reduction ratio r (default 16)")
    m.add_argument("--min-channels", type=int, default=None, help="floor on the SE hidden width (default 1)")
    m.add_argument(
        "--se-bias",
        dest="se_bias",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="biases in the SE block's FC layers (default: yes)",
    )
    m.add_argument("--squeeze", choices=("avg", "max"), default=None)
    m.add_argument("--gate", choices=("sigmoid", "tanh", "relu"), default=None)
    m.add_argument("--placement", choices=("standard", "pre", "post", "identity"), default=None)
    m.add_argument("--se-stages", default=None, help="comma-separated stages that carry SE, e.g. 2,3")
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=30)
    o.add_argument("--batch-size", type=int, default=128)
    o.add_argument("--lr", type=float, default=0.1)
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--nesterov", action="store_true")
    o.add_argument("--weight-decay", type=float, default=5e-4)
    o.add_argument("--label-smoothing", type=float, default=0.0)
    o.add_argument(
        "--schedule",
        choices=("cosine", "step", "constant"),
        default="cosine",
        help="cosine over all iterations, or step: divide by 10 at 50%% and 75%% of the epochs",
    )
    o.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up from lr/10")
    r = p.add_argument_group("run")
    r.add_argument("--backend", choices=backend.BACKENDS, default=None, help="default: $MINISE_BACKEND or numpy")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", default=None, help="run folder (default: runs/<dataset>-<model>-s<seed>)")
    r.add_argument(
        "--resume", nargs="?", const="auto", default=None, help="continue from a checkpoint (default: <out>/last.npz)"
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar (logs one line per epoch)")
    r.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulated Ctrl-C
    return p


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The SE options given on the command line, as keyword arguments of ``models.create``."""
    opts: dict[str, Any] = {}
    for name in SE_OPTIONS:
        value = getattr(args, name)
        if value is None:
            continue
        if name == "se_stages":
            try:
                value = [int(s) for s in str(value).split(",") if s.strip()]
            except ValueError:
                raise TrainError(f"--se-stages {value!r}: give stage numbers separated by commas, e.g. 2,3") from None
        opts["bias" if name == "se_bias" else name] = value
    return opts


def normalization(name: str, train: data.Dataset) -> tuple[list[float], list[float]]:
    """Per-channel mean and std: the published ones for CIFAR, measured on the training set otherwise."""
    if name == "cifar10":
        return list(data.CIFAR10_MEAN), list(data.CIFAR10_STD)
    if name == "cifar100":
        return list(data.CIFAR100_MEAN), list(data.CIFAR100_STD)
    mean, std = data.channel_stats(train.images)
    return [float(v) for v in mean], [float(v) for v in std]


def build_schedule(optimizer: optim.SGD, schedule: str, total: int, warmup: int) -> optim.LRScheduler:
    """The per-iteration learning-rate schedule: optional linear warm-up from lr/10, then cosine
    annealing to 0, step decay (divide by 10 at 50% and 75% of the iterations, the usual CIFAR form of
    the paper's step schedule), or a constant."""
    main_steps = max(total - warmup, 1)
    main: optim.LRScheduler
    if schedule == "cosine":
        main = optim.CosineAnnealingLR(optimizer, T_max=main_steps)
    elif schedule == "step":
        main = optim.MultiStepLR(optimizer, milestones=[max(main_steps // 2, 1), max(3 * main_steps // 4, 2)])
    else:
        main = optim.StepLR(optimizer, step_size=total + 1, gamma=1.0)
    if warmup == 0:
        return main
    first = optim.LinearWarmup(optimizer, warmup_steps=warmup, start_factor=0.1)
    return optim.SequentialLR(optimizer, [first, main], milestones=[warmup])


class Run:
    """One training run: its folder, model, optimiser, loaders and the position reached."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.dataset not in data.DATASETS:
            raise TrainError(f"unknown data set {args.dataset!r} - use one of {', '.join(data.DATASETS)}")
        if args.model not in models.list_models():
            raise TrainError(f"unknown model {args.model!r} - use one of {', '.join(models.list_models())}")
        for flag in ("epochs", "batch_size"):
            if getattr(args, flag) < 1:
                raise TrainError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
        if args.lr <= 0:
            raise TrainError(f"--lr must be positive, got {args.lr}")
        if args.backend:
            backend.set_backend(args.backend)
        self.out = Path(args.out or f"runs/{args.dataset}-{args.model}-s{args.seed}")
        self.train_set = data.load_dataset(args.dataset, root=args.data_dir, train=True, download=args.download)
        self.test_set = data.load_dataset(args.dataset, root=args.data_dir, train=False, download=args.download)
        self.num_classes = len(self.train_set.classes)
        self.mean, self.std = normalization(args.dataset, self.train_set)
        self.options = model_options(args)
        minise.manual_seed(args.seed)
        try:
            self.model: Module = models.create(args.model, num_classes=self.num_classes, **self.options)
        except (TypeError, ValueError) as e:
            raise TrainError(f"cannot build {args.model} with {self.options}: {e}") from None
        groups = optim.param_groups_no_decay(self.model, args.weight_decay)
        self.optimizer = optim.SGD(
            groups, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay
        )
        transform = None if args.no_augment else data.train_transform()
        self.train_loader = data.DataLoader(
            self.train_set.images,
            self.train_set.labels,
            args.batch_size,
            shuffle=True,
            drop_last=True,
            seed=args.seed,
            transform=transform,
            mean=self.mean,
            std=self.std,
        )
        if len(self.train_loader) == 0:
            raise TrainError(
                f"--batch-size {args.batch_size} is larger than the {len(self.train_set)} training images - "
                "use a smaller one"
            )
        self.test_loader = data.DataLoader(
            self.test_set.images, self.test_set.labels, 256, mean=self.mean, std=self.std
        )
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = args.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(args.warmup_epochs * self.steps_per_epoch))
        self.scheduler = build_schedule(self.optimizer, args.schedule, self.total_steps, self.warmup_steps)
        self.epoch, self.step_in_epoch, self.best = 0, 0, -1.0
        self.sums = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
        self.history: list[dict[str, Any]] = []
        self.stop_requested = False

    # ------------------------------------------------------------------ checkpoints
    def meta(self) -> dict[str, Any]:
        a = self.args
        return {
            "minise_version": minise.__version__,
            "model": a.model,
            "model_options": self.options,
            "num_classes": self.num_classes,
            "dataset": a.dataset,
            "normalize": {"mean": self.mean, "std": self.std},
            "config": vars(a),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "best_acc": self.best,
            "epoch_sums": self.sums,
            "optimizer": self.optimizer.state_dict()["param_groups"],
            "scheduler": self.scheduler.state_dict(),
            "rng_state": backend.get_rng_state(),
        }

    def save(self, name: str) -> Path:
        arrays = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                arrays[f"optim/{index}/{key}"] = value
        return save_checkpoint(self.out / name, self.meta(), arrays)

    def resume(self, path: Path) -> None:
        meta, arrays = load_checkpoint(path)
        if meta.get("model") != self.args.model or meta.get("model_options") != self.options:
            raise CheckpointError(
                f"checkpoint {path} is of {meta.get('model')} {meta.get('model_options')}, not "
                f"{self.args.model} {self.options} - resume with the same --model and SE options"
            )
        self.model = model_from_checkpoint(meta, arrays, path)
        state: dict[int, dict[str, Any]] = {}
        for key, value in split(arrays, "optim").items():
            index, name = key.split("/", 1)
            state.setdefault(int(index), {})[name] = value
        groups = optim.param_groups_no_decay(self.model, self.args.weight_decay)
        self.optimizer = optim.SGD(
            groups,
            lr=self.args.lr,
            momentum=self.args.momentum,
            nesterov=self.args.nesterov,
            weight_decay=self.args.weight_decay,
        )
        self.optimizer.load_state_dict({"param_groups": meta["optimizer"], "state": state})
        self.scheduler = build_schedule(self.optimizer, self.args.schedule, self.total_steps, self.warmup_steps)
        self.scheduler.load_state_dict(meta["scheduler"])
        self.epoch, self.step_in_epoch, self.best = meta["epoch"], meta["step_in_epoch"], meta["best_acc"]
        self.sums = meta["epoch_sums"]
        backend.set_rng_state(meta["rng_state"])
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():
            lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            self.history = [m for m in lines if m["epoch"] <= self.epoch]

    # ------------------------------------------------------------------ the loop
    def train_epoch(self) -> None:
        a = self.args
        model, opt = self.model, self.optimizer
        model.train()
        bar = Progress(
            self.steps_per_epoch, f"epoch {self.epoch + 1}/{a.epochs}", self.step_in_epoch, enabled=not a.no_progress
        )
        try:
            for xb, yb in self.train_loader.iter_epoch(self.epoch, self.step_in_epoch):
                t0 = time.perf_counter()
                step = self.epoch * self.steps_per_epoch + self.step_in_epoch
                lr = self.optimizer.param_groups[0]["lr"]
                x, y = Tensor(backend.to_device(xb)), backend.to_device(yb)
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=a.label_smoothing)
                value = float(loss.item())
                if not math.isfinite(value):
                    raise TrainError(
                        f"the loss became {value} at epoch {self.epoch + 1}, step {self.step_in_epoch + 1} - "
                        "stopped; last.npz keeps the last good state. Try a lower --lr or more --warmup-epochs",
                        EXIT_DIVERGED,
                    )
                opt.zero_grad()
                loss.backward()
                opt.step()
                self.scheduler.step()
                correct = int((logits.data.argmax(axis=1) == y).sum())
                self.step_in_epoch += 1
                s = self.sums
                s["loss"] += value * len(yb)
                s["correct"] += correct
                s["seen"] += len(yb)
                s["seconds"] += time.perf_counter() - t0
                bar.update(
                    {
                        "loss": f"{s['loss'] / s['seen']:.3f}",
                        "acc": f"{100 * s['correct'] / s['seen']:.1f}%",
                        "img/s": f"{s['seen'] / max(s['seconds'], 1e-9):.0f}",
                        "lr": f"{lr:.4f}",
                    }
                )
                if a.stop_after_steps is not None and step + 1 >= a.stop_after_steps:
                    self.stop_requested = True
                if self.stop_requested:
                    break
        finally:
            bar.close()

    def end_epoch(self) -> dict[str, Any]:
        result = evaluate(self.model, self.test_loader, self.num_classes)
        s = self.sums
        record = {
            "epoch": self.epoch + 1,
            "train_loss": s["loss"] / s["seen"],
            "train_acc": s["correct"] / s["seen"],
            "test_loss": result.loss,
            "test_acc": result.top1,
            "test_top5": result.top5,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": s["seen"] / max(s["seconds"], 1e-9),
            "seconds": s["seconds"],
        }
        self.history.append(record)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.sums = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        improved = result.top1 > self.best
        if improved:
            self.best = result.top1
        self.save("last.npz")
        if improved:
            self.save("best.npz")
        plot_curves(self.history, self.out / "curves.png", title=f"{self.args.model} on {self.args.dataset}")
        return record

    def run(self) -> int:
        a = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        if a.resume:
            path = self.out / "last.npz" if a.resume == "auto" else Path(a.resume)
            self.resume(path)
            # metrics.jsonl is rewritten to the checkpoint's epochs, so a resumed file has no duplicates
            (self.out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in self.history))
            print(f"resumed from {path} at epoch {self.epoch + 1}, step {self.step_in_epoch}", file=sys.stderr)
        else:
            (self.out / "metrics.jsonl").write_text("")
        (self.out / "config.json").write_text(json.dumps(vars(a) | {"model_options": self.options}, indent=2))
        print(
            f"{a.model} ({self.model.num_parameters():,} parameters) on {a.dataset}: {len(self.train_set)} train / "
            f"{len(self.test_set)} held-out images, backend {backend.get_backend()}, run folder {self.out}",
            file=sys.stderr,
        )

        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum: int, frame: Any) -> None:
            if self.stop_requested:  # a second Ctrl-C: stop at once
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            self.stop_requested = True
            print("\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

        signal.signal(signal.SIGINT, on_sigint)
        try:
            while self.epoch < a.epochs:
                self.train_epoch()
                if self.stop_requested and self.step_in_epoch < self.steps_per_epoch:
                    path = self.save("last.npz")
                    print(
                        f"stopped at epoch {self.epoch + 1}, step {self.step_in_epoch}; saved {path} - continue with "
                        f"--resume (same arguments)",
                        file=sys.stderr,
                    )
                    return EXIT_INTERRUPTED
                r = self.end_epoch()
                print(
                    f"epoch {r['epoch']}/{a.epochs}: train loss {r['train_loss']:.4f} "
                    f"acc {100 * r['train_acc']:.2f}% | "
                    f"held-out loss {r['test_loss']:.4f} top-1 {100 * r['test_acc']:.2f}% top-5 "
                    f"{100 * r['test_top5']:.2f}% | {r['images_per_s']:.0f} img/s",
                    file=sys.stderr,
                )
                if self.stop_requested:
                    print(f"stopped after epoch {self.epoch}; continue with --resume", file=sys.stderr)
                    return EXIT_INTERRUPTED
        finally:
            signal.signal(signal.SIGINT, previous)
        print(f"done: best held-out top-1 {100 * self.best:.2f}%; curves in {self.out / 'curves.png'}")
        return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return Run(args).run()
    except TrainError as e:
        print(f"minise.train: {e}", file=sys.stderr)
        return e.code
    except (
        CheckpointError,
        backend.BackendUnavailableError,
        data.DatasetNotFoundError,
        data.DatasetCorruptError,
        data.DownloadError,
        OSError,
    ) as e:
        print(f"minise.train: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("minise.train: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
