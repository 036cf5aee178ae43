"""Train a (SE-)ResNet: ``python -m minise.train --dataset shapes --model se_resnet20``.

What a run does, in order: choose the backend, load the data, build the model, the optimiser (SGD
with momentum, weight decay off for BN and bias parameters) and the learning-rate schedule (warm-up,
then cosine or step decay, updated every iteration); then for each epoch train with a progress bar,
evaluate on the held-out set, append a line to ``metrics.jsonl``, write ``last.npz`` and (if the
accuracy improved) ``best.npz`` atomically, and redraw ``curves.png``.

Nothing is lost: Ctrl-C finishes the current step, saves ``last.npz`` with the exact position in the
epoch, and exits; ``--resume`` continues from it to exactly the result an uninterrupted run with the
same seed would have reached (the batches are a function of seed, epoch and index; the checkpoint
holds weights, momentum buffers, schedule, BN statistics and the RNG state). ``--resume --epochs N`` on a
finished run extends it to N epochs, the schedule re-planned for N epochs from the step reached.
``--resume CHECKPOINT --out NEW`` branches the run into a new folder, which starts with a copy of the
run's ``best.npz`` (the checkpoint whose accuracy is the best carried over), so that ``NEW`` holds its
best checkpoint even when no later epoch beats it.

Divergence stops the run (exit status 2) with the epoch and step: a training loss, a gradient norm, a
weight or a held-out loss that is NaN or infinite. Nothing non-finite is ever written: the last good
checkpoint stays. A run never writes into another run's folder (see :mod:`minise.run_folder`).

For a smoke run that takes seconds, use a few images: ``--train-images 64 --test-images 32
--batch-size 16 --epochs 1``.

Photographs (``--dataset imagenette``, ``imagewoof`` or ``imagefolder --data-dir DIR``, the ImageNet-style
models ``resnet18`` ... ``se_resnext50_32x4d``) are read from their files by ``--workers`` processes:
RandomResizedCrop to ``--image-size`` (area ``--crop-scale-min``..1, ratio 3/4..4/3) and a flip to train,
the short side resized to ``image-size / 0.875`` and the centre cut out to evaluate, ImageNet's mean and
std; ``--cache`` decodes every image once into a memory-mapped file (see :mod:`minise.data.image_cache`).
A file that cannot be decoded is reported and skipped (``--strict``: the run stops).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import minise
from minise import backend, cpu, data, models, optim, run_folder
from minise import functional as F
from minise.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, split
from minise.distributed import training as distributed
from minise.evaluate import evaluate, model_from_checkpoint
from minise.nn import Module
from minise.plotting import plot_curves
from minise.progress import Progress
from minise.tensor import Tensor
from minise.train_options import (  # noqa: F401  (re-exported: minise.train.build_parser ...)
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    IMAGE_RESUME_KEYS,
    NUMPY_FP_WARNINGS,
    RESUME_KEYS,
    SE_OPTIONS,
    TrainError,
    build_parser,
    build_schedule,
    check_numbers,
    image_loaders,
    load_image_splits,
    load_split,
    model_options,
    normalization,
    replan_schedule,
    resolve_image_size,
)


def model_flags(model: Any, options: Any) -> str:
    """A model and its SE options as the command line that gives them: ``se_resnet20 --reduction 4 --no-se-bias``
    (the model alone when it has no options; options that are not a dict are shown as they are)."""
    if not options:
        return str(model)
    if not isinstance(options, dict):
        return f"{model} (SE options {options!r})"
    words = [str(model)]
    for key, value in options.items():
        flag = "--" + ("se_bias" if key == "bias" else str(key)).replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            words.append(f"{flag} {','.join(str(v) for v in value)}")
        else:
            words.append(f"{flag} {value}")
    return " ".join(words)


class Run:
    """One training run: its folder, model, optimiser, loaders and the position reached."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        names = data.DATASETS + data.IMAGE_DATASETS
        if args.dataset not in names:
            raise TrainError(f"unknown data set {args.dataset!r} - use one of {', '.join(names)}")
        if args.model not in models.list_models():
            raise TrainError(f"unknown model {args.model!r} - use one of {', '.join(models.list_models())}")
        check_numbers(args)
        resolve_image_size(args)
        if args.backend:
            backend.set_backend(args.backend)
        # distributed (--distributed under mpiexec): this process's rank, its share of every batch (see
        # minise.distributed.training); None in a single-process run
        problem = distributed.check_arguments(args)
        if problem:
            raise TrainError(problem)
        self.dist = distributed.DistributedRun.from_args(args) if args.distributed else None
        self.is_main = self.dist is None or self.dist.is_main
        world, rank = (self.dist.size, self.dist.rank) if self.dist is not None else (1, 0)
        args.world_size, args.global_batch_size = world, world * args.batch_size  # recorded in config and checkpoints
        self.default_out = Path("runs") / f"{args.dataset}-{args.model}-s{args.seed}"
        self.out = run_folder.choose(args.out, self.default_out, args.resume, args.overwrite)
        self.images = args.dataset in data.IMAGE_DATASETS
        self.pool: data.DecodePool | None = None
        self.train_set: data.Dataset | data.ImageFolder
        self.test_set: data.Dataset | data.ImageFolder
        if self.images:
            self.train_set, self.test_set = load_image_splits(args)
        else:
            self.train_set = load_split(args, train=True)
            self.test_set = load_split(args, train=False)
        self.num_classes = len(self.train_set.classes)
        self.mean, self.std = normalization(args.dataset, self.train_set)
        self.options = model_options(args)
        minise.manual_seed(args.seed)
        try:
            self.model: Module = models.create(args.model, num_classes=self.num_classes, **self.options)
        except (TypeError, ValueError) as e:
            raise TrainError(f"cannot build {args.model} with {self.options}: {e}") from None
        self.optimizer = self.build_optimizer()
        if len(self.train_set) < args.batch_size * world:  # an epoch would have no (full) batch
            raise TrainError(
                f"--batch-size {args.batch_size} x {world} process(es) is larger than the {len(self.train_set)} "
                "training images - use a smaller one"
            )
        self.train_loader: data.DataLoader | data.ImageFolderLoader
        self.test_loader: data.DataLoader | data.ImageFolderLoader
        if isinstance(self.train_set, data.ImageFolder) and isinstance(self.test_set, data.ImageFolder):
            self.pool = data.DecodePool(args.workers)  # decoding processes shared by both loaders
            try:
                self.train_loader, self.test_loader = image_loaders(
                    args, self.train_set, self.test_set, self.mean, self.std, self.pool, world, rank
                )
            except BaseException:
                self.close()
                raise
        else:
            assert isinstance(self.train_set, data.Dataset) and isinstance(self.test_set, data.Dataset)
            # the CIFAR recipe pads 4 pixels of 32; images averaged down keep the same share (2 of 16)
            padding = max(1, 4 * self.input_size() // 32)
            transform = None if args.no_augment else data.train_transform(padding=padding)
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
                num_replicas=world,
                rank=rank,
            )
            self.test_loader = data.DataLoader(
                self.test_set.images,
                self.test_set.labels,
                256,
                mean=self.mean,
                std=self.std,
                num_replicas=world,
                rank=rank,
            )
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = args.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(args.warmup_epochs * self.steps_per_epoch))
        self.scheduler = build_schedule(self.optimizer, args.schedule, self.total_steps, self.warmup_steps)
        self.epoch, self.step_in_epoch, self.best = 0, 0, -1.0
        self.sums = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
        self.history: list[dict[str, Any]] = []
        self.stop_requested = False
        self.interrupted = False  # distributed: Ctrl-C seen by this rank, not yet agreed on
        self.last_saved: Path | None = None  # the last good checkpoint of this run: a resumed or saved last.npz
        self.extended_at: list[int] = []  # epochs at which a finished run was extended to more epochs
        self.extending = False  # this invocation extends a finished run (--resume with more --epochs)

    def close(self) -> None:
        """Stop the image-decoding processes, if any."""
        if self.pool is not None:
            self.pool.close()
        if self.dist is not None:  # distributed: this rank's errors must be seen
            self.dist.restore_output()

    def skipped_line(self) -> str | None:
        """The end-of-epoch count of images that could not be decoded, or None if there were none."""
        counts = [len(loader.skipped) for loader in (self.train_loader, self.test_loader)
                  if isinstance(loader, data.ImageFolderLoader)]  # fmt: skip
        if not sum(counts):
            return None
        return (
            f"  skipped {counts[0]} training and {counts[1]} held-out images that could not be decoded "
            "(paths above; --strict stops at the first)"
        )

    def diverged(self, what: str) -> TrainError:
        """The error (exit 2) that stops a diverged run; the checkpoints on disk are left as they are."""
        last = self.last_saved
        kept = f"{last} keeps the last good state" if last else "no checkpoint of this run had been written yet"
        return TrainError(f"{what} - stopped; {kept}. Try a lower --lr or more --warmup-epochs", EXIT_DIVERGED)

    def build_optimizer(self) -> optim.SGD:
        """SGD over the model's parameters, with weight decay off for BN and bias parameters."""
        a = self.args
        groups = optim.param_groups_no_decay(self.model, a.weight_decay)
        try:
            return optim.SGD(groups, lr=a.lr, momentum=a.momentum, nesterov=a.nesterov, weight_decay=a.weight_decay)
        except ValueError as e:
            raise TrainError(str(e)) from None

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
            "input_size": self.input_size(),
            "config": vars(a),
            "extended_at_epochs": self.extended_at,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "best_acc": self.best,
            "epoch_sums": self.sums,
            "optimizer": self.optimizer.state_dict()["param_groups"],
            "scheduler": self.scheduler.state_dict(),
            "rng_state": backend.get_rng_state(),
        }

    def input_size(self) -> int:
        """The side of the square images the model trains on."""
        if isinstance(self.train_set, data.ImageFolder):
            return int(self.args.image_size)
        return int(self.train_set.images.shape[-1])

    def check_weights(self) -> None:
        """Stop (exit 2) if a parameter or buffer is no longer finite: a step can overflow the weights while
        its own loss is still finite, and such weights must never overwrite the last good checkpoint."""
        state = self.model.state_dict()
        xp = backend.get_array_module(next(iter(state.values())))
        bad = [k for k, v in state.items() if not bool(xp.isfinite(v).all())]
        if bad:
            e, k = self.epoch, self.step_in_epoch
            where = f"epoch {e + 1}, step {k}" if k else f"the end of epoch {e}"
            raise self.diverged(f"the weights ({bad[0]}, ...) became NaN or infinite by {where}")

    def save(self, name: str) -> Path:
        """Write ``name`` in the run folder atomically (after :meth:`check_weights`)."""
        self.check_weights()
        arrays = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        for index, entry in self.optimizer.state_dict()["state"].items():
            for key, value in entry.items():
                arrays[f"optim/{index}/{key}"] = value
        # distributed: every rank holds the same weights; rank 0 alone writes them
        path = save_checkpoint(self.out / name, self.meta(), arrays) if self.is_main else self.out / name
        if name == "last.npz":
            self.last_saved = path
        return path

    def resume(self, path: Path) -> None:
        """Restore the model, optimiser, schedule, position and RNG from a checkpoint of this same run;
        CheckpointError (one line) for one of another model, data set or batch sequence, or a damaged one."""
        meta, arrays = load_checkpoint(path)
        if meta.get("model") != self.args.model or meta.get("model_options") != self.options:
            raise CheckpointError(
                f"checkpoint {path} is of {model_flags(meta.get('model'), meta.get('model_options'))}, not "
                f"{model_flags(self.args.model, self.options)} - resume with the same --model and SE options"
            )
        if meta.get("dataset") != self.args.dataset or meta.get("num_classes") != self.num_classes:
            raise CheckpointError(
                f"checkpoint {path} was trained on {meta.get('dataset')} ({meta.get('num_classes')} classes), not "
                f"{self.args.dataset} ({self.num_classes}) - resume with the same --dataset"
            )
        saved = meta.get("config", {})
        problem = distributed.check_resume(saved, path, self.args.world_size)  # distributed: the same N
        if problem:
            raise CheckpointError(problem)
        finished = meta.get("step_in_epoch") == 0 and meta.get("epoch") == saved.get("epochs")
        extend = finished and isinstance(saved.get("epochs"), int) and self.args.epochs > saved["epochs"]
        for key in RESUME_KEYS + (IMAGE_RESUME_KEYS if self.images else ()):
            if key == "epochs" and extend:
                continue
            if key in saved and saved[key] != getattr(self.args, key):
                flag = "--" + key.replace("_", "-")
                raise CheckpointError(
                    f"checkpoint {path} was trained with {flag} {saved[key]}, not {getattr(self.args, key)} - "
                    "resume with the same arguments (the batches, the schedule and the position depend on them)"
                )
        side = meta.get("input_size")
        if not self.images and isinstance(side, int) and side != self.input_size():
            raise CheckpointError(
                f"checkpoint {path} was trained on {side}x{side} images, not {self.input_size()}x{self.input_size()} "
                f"- resume with --image-size {side}"
            )
        self.model = model_from_checkpoint(meta, arrays, path)
        try:
            state: dict[int, dict[str, Any]] = {}
            for key, value in split(arrays, "optim").items():
                index, name = key.split("/", 1)
                state.setdefault(int(index), {})[name] = value
            self.optimizer = self.build_optimizer()
            self.optimizer.load_state_dict({"param_groups": meta["optimizer"], "state": state})
            self.scheduler = build_schedule(self.optimizer, self.args.schedule, self.total_steps, self.warmup_steps)
            self.epoch, self.step_in_epoch, self.best = meta["epoch"], meta["step_in_epoch"], meta["best_acc"]
            self.extended_at = list(meta.get("extended_at_epochs", []))
            if extend:  # the schedule planned for the new number of epochs, from the step reached
                replan_schedule(self.scheduler, self.epoch * self.steps_per_epoch)
                self.extended_at.append(self.epoch)
                self.extending = True
            else:
                self.scheduler.load_state_dict(meta["scheduler"])
            self.sums = {k: float(meta["epoch_sums"][k]) for k in self.sums}
            backend.set_rng_state(meta["rng_state"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(
                f"checkpoint {path} has an unusable training state ({type(e).__name__}: {e}) - "
                "start a new run or use another checkpoint"
            ) from None
        if not 0 <= self.step_in_epoch < self.steps_per_epoch:
            raise CheckpointError(
                f"checkpoint {path} is at step {self.step_in_epoch} of an epoch of {self.steps_per_epoch} - "
                "it was saved with other data or batch size; resume with the same arguments"
            )
        self.last_saved = path
        metrics = path.parent / "metrics.jsonl"  # the checkpoint's own run (also when --out is a new folder)
        if metrics.exists():
            try:
                lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
                self.history = [m for m in lines if m["epoch"] <= self.epoch]
            except (ValueError, KeyError, TypeError) as e:
                raise TrainError(
                    f"{metrics} is not one JSON object with an 'epoch' per line ({type(e).__name__}: {e}) - "
                    "repair or delete it to resume"
                ) from None

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
                step_in = self.step_in_epoch
                step = self.epoch * self.steps_per_epoch + step_in
                lr = self.optimizer.param_groups[0]["lr"]
                x, y = Tensor(backend.to_device(xb)), backend.to_device(yb)
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=a.label_smoothing)
                value = float(loss.item())
                if not math.isfinite(value):
                    raise self.diverged(f"the loss became {value} at epoch {self.epoch + 1}, step {step_in + 1}")
                opt.zero_grad()
                if self.dist is not None:  # distributed: backward with the bucketed all-reduce of the gradients
                    self.dist.backward(loss)
                else:
                    loss.backward()
                norm = self.grad_norm()
                if not math.isfinite(norm):
                    raise self.diverged(
                        f"the gradient norm became {norm} at epoch {self.epoch + 1}, step {step_in + 1}"
                    )
                opt.step()
                self.scheduler.step()
                correct = int((logits.data.argmax(axis=1) == y).sum())
                seen = len(yb)
                if self.dist is not None:  # distributed: sums over all ranks, and an interrupt stops all at one step
                    sums = self.dist.agree(value * seen, correct, seen, self.interrupted)
                    value, correct, seen, stop = sums[0] / sums[2], int(sums[1]), int(sums[2]), sums[3]
                    self.stop_requested = self.stop_requested or stop
                self.step_in_epoch += 1
                s = self.sums
                s["loss"] += value * seen
                s["correct"] += correct
                s["seen"] += seen
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

    def grad_norm(self) -> float:
        """||g||_2 = sqrt(sum over parameters of sum(g * g)): the gradient's global L2 norm (one transfer)."""
        grads = [p.grad.ravel() for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return 0.0
        xp = backend.get_array_module(grads[0])
        return float(xp.sqrt(sum(xp.vdot(g, g).astype(xp.float64) for g in grads)))  # summed in float64

    def end_epoch(self) -> dict[str, Any]:
        """Evaluate, append to metrics.jsonl, write last.npz (and best.npz), redraw the curves."""
        self.check_weights()  # before anything is written for this epoch
        if self.dist is not None:  # distributed: every rank evaluates its share, the counts are summed
            result = self.dist.evaluate(self.model, self.test_loader, self.num_classes)
        else:
            result = evaluate(self.model, self.test_loader, self.num_classes)
        if not math.isfinite(result.loss):
            raise self.diverged(
                f"the held-out loss became {result.loss} after epoch {self.epoch + 1}, step {self.step_in_epoch}"
            )
        s = self.sums
        record = {
            "epoch": self.epoch + 1,
            "train_loss": s["loss"] / s["seen"],
            "train_acc": s["correct"] / s["seen"],
            "test_loss": result.loss,
            "test_acc": result.top1,
            "test_top5": result.top5,
            # the rate the epoch's last step used (the optimiser already holds the next step's)
            "lr": self.scheduler.lr_at((self.epoch + 1) * self.steps_per_epoch - 1)[0],
            "images_per_s": s["seen"] / max(s["seconds"], 1e-9),
            "seconds": s["seconds"],
        }
        self.history.append(record)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.sums = {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}
        if self.is_main:  # distributed: rank 0 alone writes the run folder
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        improved = result.top1 > self.best
        if improved:
            self.best = result.top1
        self.save("last.npz")
        if improved:
            self.save("best.npz")
        if self.is_main:
            plot_curves(self.history, self.out / "curves.png", title=f"{self.args.model} on {self.args.dataset}")
        return record

    def loop(self) -> int:
        """Train and evaluate epoch after epoch up to --epochs; 0 when done, EXIT_INTERRUPTED when stopped."""
        a = self.args
        # Printed once Ctrl-C is handled: from this line on, an interrupt always saves a checkpoint.
        print(
            f"{a.model} ({self.model.num_parameters():,} parameters) on {a.dataset}: {len(self.train_set)} "
            f"train / {len(self.test_set)} held-out images, backend {backend.get_backend()}, run folder "
            f"{self.out}",
            file=sys.stderr,
        )
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
            skipped = self.skipped_line()
            if skipped:
                print(skipped, file=sys.stderr)
            if self.stop_requested:
                print(f"stopped after epoch {self.epoch}; continue with --resume", file=sys.stderr)
                return EXIT_INTERRUPTED
        return 0

    def start(self) -> None:
        """Resume if asked, then claim the run folder: write config.json (exclusively, for a new run; see
        :mod:`minise.run_folder`) and metrics.jsonl. After every check, so a refused run leaves no folder."""
        a = self.args
        if a.resume:
            path = self.out / "last.npz" if a.resume == "auto" else Path(a.resume)
            self.resume(path)
        config = vars(a) | {
            "model_options": self.options,
            "num_parameters": self.model.num_parameters(),
            "extended_at_epochs": self.extended_at,
        }
        if self.dist is not None:  # distributed: wrap the (resumed) model; rank 0 alone claims the folder
            self.dist.wrap(self.model)
            self.dist.comm.barrier()  # every rank has checked the folder before rank 0 claims it
            if not self.is_main:
                return
        if a.overwrite:
            run_folder.remove_run_files(self.out)
        default_base = None if a.out or a.resume else self.default_out
        self.out = run_folder.claim(self.out, json.dumps(config, indent=2), default_base, replace=bool(a.resume))
        if not a.resume:
            (self.out / "metrics.jsonl").write_text("")
            return
        # metrics.jsonl is rewritten to the checkpoint's epochs, so a resumed file has no duplicates
        (self.out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in self.history))
        print(f"resumed from {path} at epoch {self.epoch + 1}, step {self.step_in_epoch}", file=sys.stderr)
        if path.parent.resolve() != self.out.resolve():
            self.carry_best(path.parent / "best.npz")
        if self.extending:
            print(
                f"extending the finished {self.epoch}-epoch run to {a.epochs} epochs: the learning-rate schedule is "
                f"re-planned for {a.epochs} epochs from step {self.epoch * self.steps_per_epoch} (lr "
                f"{self.scheduler.get_last_lr()[0]:.4g}), so the result is an extension, not identical to a fresh "
                f"{a.epochs}-epoch run",
                file=sys.stderr,
            )
        elif self.epoch >= a.epochs:
            print(
                f"the run has already trained its {self.epoch} epochs - give --epochs greater than {self.epoch} "
                "to extend it",
                file=sys.stderr,
            )

    def carry_best(self, source: Path) -> None:
        """A run resumed into a new folder copies the best checkpoint of the run it continues, ``source``
        (atomically, as every checkpoint write), so the new folder is complete on its own: its best.npz
        is otherwise written only by an epoch that beats the carried-over best accuracy. Copied only if
        it is that best: the same model and data set, its accuracy the one carried over, and not from a
        later epoch than the checkpoint resumed (a copy of last.npz resumed beside a newer best.npz)."""
        if self.best < 0:  # no epoch finished yet: the first one writes best.npz
            return
        best = f"{100 * self.best:.2f}%"
        try:
            meta, arrays = load_checkpoint(source)
        except CheckpointError as e:
            meta, arrays, why = {}, {}, str(e).split(" - ")[0]
        else:
            same = meta.get("model") == self.args.model and meta.get("dataset") == self.args.dataset
            epoch = meta.get("epoch")
            ours = same and meta.get("best_acc") == self.best and isinstance(epoch, int) and epoch <= self.epoch
            why = "" if ours else f"{source} is not the checkpoint of the carried-over best top-1 {best}"
        if why:
            print(
                f"note: {why}, so {self.out / 'best.npz'} will be written only by an epoch that beats {best}",
                file=sys.stderr,
            )
            return
        save_checkpoint(self.out / "best.npz", meta, arrays)
        print(f"copied {source} (best top-1 {best}, epoch {meta['epoch']}) into {self.out}", file=sys.stderr)

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> int:
        if self.dist is not None:
            self.dist.silence_others()  # distributed: rank 0 alone prints
        self.start()
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum: int, frame: Any) -> None:
            if self.stop_requested:  # a second Ctrl-C: stop at once
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            if self.dist is not None:  # distributed: the ranks stop at the step they agree on (see train_epoch)
                self.interrupted = True
            else:
                self.stop_requested = True
            print("\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

        signal.signal(signal.SIGINT, on_sigint)
        try:
            # A diverging run overflows in NumPy before its loss turns NaN: rather than a screen of
            # RuntimeWarnings, the loss and weight checks (see diverged) report it in one line. (A warnings
            # filter, not np.errstate, which would not reach the ops' worker threads.)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", NUMPY_FP_WARNINGS, RuntimeWarning)
                status = self.loop()
        finally:
            signal.signal(signal.SIGINT, previous)
        if status != 0:
            return status
        print(f"done: best held-out top-1 {100 * self.best:.2f}%; curves in {self.out / 'curves.png'}")
        return 0


def main(argv: list[str] | None = None) -> int:
    # distributed: a failure on one rank ends the whole job (MPI_Abort), else the others would wait for it
    return distributed.finish(_main(argv))


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cpu.retain_freed_memory()  # reuse freed memory from step to step (see its docstring)
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
        data.DataLoaderError,
    ) as e:
        print(f"minise.train: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # a write that failed mid-run (disk full, folder removed): one line, no bare errno
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"minise.train: {e.strerror or e}{where} - check the path, its permissions and the free space",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("minise.train: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
