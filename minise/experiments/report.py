"""What a study writes: ``results.csv`` (one row per run), ``report.md`` (one row per variant, shaped
like the paper's tables) and ``errors.png`` (each variant's error, seed by seed, with its spread).

A run's error is its held-out top-1 / top-5 error (%) after its LAST epoch (not the best epoch, which
would pick the luckiest evaluation on the very images it is scored on). Per variant: the mean ± sd
over seeds and the 95 % t-interval of the mean; against the baseline (the study's first variant): the
mean of the seed-by-seed differences, its 95 % interval and the paired t-test's p-value (see
:mod:`minise.experiments.stats`). A difference is called *within the noise* unless p < 0.05.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minise import data, models
from minise.checkpoint import CheckpointError, load_checkpoint
from minise.experiments.runner import RunSpec, read_metrics
from minise.experiments.stats import PairedTest, Summary, paired_test, summarize
from minise.experiments.studies import Study, Variant

CSV_FIELDS = ("variant", "seed", "top1_err", "top5_err", "epochs", "params", "macs", "seconds", "folder")


@dataclass(frozen=True)
class RunResult:
    """The numbers of one finished run."""

    variant: str
    seed: int
    top1_err: float
    top5_err: float
    epochs: int
    params: int
    macs: int
    seconds: float
    folder: str


def _macs(folder: Path, config: dict[str, Any]) -> int:
    """Multiply-accumulates of one image through the run's model (built from its checkpoint's meta)."""
    meta, _ = load_checkpoint(folder / "last.npz")
    model = models.create(meta["model"], num_classes=meta["num_classes"], **meta.get("model_options", {}))
    side = int(config.get("image_size") or 32)  # the side the model saw
    if config.get("dataset") not in data.IMAGE_DATASETS:
        side = min(side, 32)  # 32x32 arrays (configs from before --image-size applied to them say 128)
    return models.count_macs(model, (3, side, side))


def collect(specs: Sequence[RunSpec]) -> list[RunResult]:
    """The results of every finished run among ``specs`` (unfinished ones are left out)."""
    results: list[RunResult] = []
    macs_of: dict[str, int] = {}
    for spec in specs:
        metrics = read_metrics(spec.folder)
        config_path = spec.folder / "config.json"
        if not metrics or not config_path.exists():
            continue
        config = json.loads(config_path.read_text())
        if metrics[-1].get("epoch") != config.get("epochs"):
            continue
        last = metrics[-1]
        if spec.variant.name not in macs_of:
            try:
                macs_of[spec.variant.name] = _macs(spec.folder, config)
            except (CheckpointError, KeyError, TypeError, ValueError):
                macs_of[spec.variant.name] = -1  # shown as "?" in the report
        results.append(
            RunResult(
                spec.variant.name,
                spec.seed,
                100 * (1 - float(last["test_acc"])),
                100 * (1 - float(last["test_top5"])),
                int(last["epoch"]),
                int(config.get("num_parameters", -1)),
                macs_of[spec.variant.name],
                sum(float(m.get("seconds", 0.0)) for m in metrics),
                str(spec.folder),
            )
        )
    return results


def write_csv(results: Sequence[RunResult], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in results:
            w.writerow(
                [r.variant, r.seed, f"{r.top1_err:.4f}", f"{r.top5_err:.4f}", r.epochs, r.params, r.macs,
                 f"{r.seconds:.1f}", r.folder]
            )  # fmt: skip
    return path


@dataclass(frozen=True)
class VariantRow:
    """One line of the report: a variant's statistics and its comparison with the baseline."""

    variant: Variant
    top1: Summary | None
    top5: Summary | None
    vs_baseline: PairedTest | None  # None for the baseline itself
    params: int
    macs: int


def rows(study: Study, results: Sequence[RunResult]) -> list[VariantRow]:
    by_variant: dict[str, dict[int, RunResult]] = {}
    for r in results:
        by_variant.setdefault(r.variant, {})[r.seed] = r
    base = {s: r.top1_err for s, r in by_variant.get(study.baseline.name, {}).items()}
    out = []
    for i, v in enumerate(study.variants):
        runs = by_variant.get(v.name, {})
        top1 = summarize([r.top1_err for r in runs.values()]) if runs else None
        top5 = summarize([r.top5_err for r in runs.values()]) if runs else None
        test = paired_test({s: r.top1_err for s, r in runs.items()}, base) if i > 0 else None
        first = next(iter(runs.values()), None)
        out.append(VariantRow(v, top1, top5, test, first.params if first else -1, first.macs if first else -1))
    return out


def _pm(s: Summary | None) -> str:
    if s is None:
        return "-"
    return f"{s.mean:.2f}" if s.sd is None else f"{s.mean:.2f} ± {s.sd:.2f}"


def _ci(s: Summary | None) -> str:
    return "-" if s is None or s.low is None or s.high is None else f"[{s.low:.2f}, {s.high:.2f}]"


def _diff(t: PairedTest | None) -> str:
    if t is None:
        return "(baseline)"
    if t.n == 0:
        return "-"
    if t.low is None or t.high is None:
        return f"{t.mean_diff:+.2f}"
    return f"{t.mean_diff:+.2f} [{t.low:+.2f}, {t.high:+.2f}]"


def _p(t: PairedTest | None) -> str:
    return "" if t is None or t.p is None else f"{t.p:.3f}"


def _count(n: int, unit: float, suffix: str) -> str:
    return "?" if n < 0 else f"{n / unit:.3g} {suffix}"


def verdicts(study: Study, table: Sequence[VariantRow]) -> list[str]:
    """One plain sentence per variant compared with the baseline."""
    base = study.baseline.name
    lines = []
    for row in table[1:]:
        t, name = row.vs_baseline, row.variant.name
        if t is None or t.n < 2 or t.p is None:
            lines.append(f"- {name}: fewer than 2 seeds finished with the baseline's - no test possible.")
        elif t.within_noise:
            lines.append(
                f"- {name} vs {base}: {t.mean_diff:+.2f} points of top-1 error, **within the noise** "
                f"(paired t-test over {t.n} seeds, p = {t.p:.2f}; the 95 % interval of the difference "
                f"[{t.low:+.2f}, {t.high:+.2f}] contains 0)."
            )
        else:
            word = "lower" if t.mean_diff < 0 else "higher"
            lines.append(
                f"- {name} vs {base}: top-1 error {abs(t.mean_diff):.2f} points {word}, beyond the seed-to-seed "
                f"noise (paired t-test over {t.n} seeds, p = {t.p:.3f})."
            )
    return lines


def markdown(study: Study, table: Sequence[VariantRow], header: Sequence[str], missing: Sequence[str]) -> str:
    """The report: a title, how it was made, the table, the verdicts, and what is missing."""
    src = f" ({study.source} of Hu et al., *Squeeze-and-Excitation Networks*, TPAMI 2019)" if study.source else ""
    lines = [f"# Study `{study.name}`: {study.title}{src}", ""]
    lines += list(header) + [""]
    lines += [
        "| variant | top-1 err (%) | 95 % CI | top-5 err (%) | Δ top-1 vs baseline [95 % CI] | p (paired) "
        "| params | MACs | paper top-1 / top-5 (ImageNet) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table:
        paper = "-" if r.variant.paper is None else f"{r.variant.paper[0]:.2f} / {r.variant.paper[1]:.2f}"
        lines.append(
            f"| {r.variant.name} | {_pm(r.top1)} | {_ci(r.top1)} | {_pm(r.top5)} | {_diff(r.vs_baseline)} | "
            f"{_p(r.vs_baseline)} | {_count(r.params, 1e6, 'M')} | {_count(r.macs, 1e6, 'M')} | {paper} |"
        )
    lines += ["", "## Against the baseline", ""] + verdicts(study, table)
    if all(r.vs_baseline is None or r.vs_baseline.within_noise for r in table):
        lines += ["", "No variant differs from the baseline by more than the seed-to-seed noise of this budget."]
    for note in study.notes:
        lines += ["", f"Note: {note}."]
    if missing:
        lines += ["", f"Not finished (left out above): {', '.join(missing)}."]
    lines += [
        "",
        "Errors: held-out error after the last epoch, mean ± sd over seeds; 95 % CI: Student-t interval of the "
        "mean; Δ: mean of the seed-by-seed differences variant - baseline (negative: fewer errors; the same "
        'seed gives the same order of the training batches), tested with a paired t-test ("within the noise" '
        "unless p < 0.05). MACs: one image, "
        "the SENet paper's \"FLOPs\". The paper's column is its ResNet-50 on ImageNet, for reference only.",
        "",
        "![error per variant](errors.png)",
        "",
    ]
    return "\n".join(lines)


def plot(study: Study, results: Sequence[RunResult], path: Path) -> Path:
    """Top-1 error per variant: every seed as a dot, the mean with ± 1 sd as a bar."""
    from minise.plotting import _pyplot  # noqa: PLC0415

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(study.variants), 4))
    for i, v in enumerate(study.variants):
        errs = [r.top1_err for r in results if r.variant == v.name]
        if not errs:
            continue
        ax.plot([i] * len(errs), errs, "o", color="0.5", alpha=0.7, label="one seed" if i == 0 else None)
        s = summarize(errs)
        ax.errorbar([i], [s.mean], yerr=[[s.sd or 0.0], [s.sd or 0.0]], fmt="s", color="C0", capsize=6,
                    label="mean ± sd" if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(study.variants)), [v.name for v in study.variants], rotation=20)
    ax.set(ylabel="held-out top-1 error (%)", title=f"study {study.name}: {study.title}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(study: Study, specs: Sequence[RunSpec], out: Path, header: Sequence[str]) -> list[RunResult]:
    """Write results.csv, report.md and errors.png for the finished runs among ``specs``."""
    results = collect(specs)
    done = {(r.variant, r.seed) for r in results}
    missing = [s.label for s in specs if (s.variant.name, s.seed) not in done]
    table = rows(study, results)
    write_csv(results, out / "results.csv")
    (out / "report.md").write_text(markdown(study, table, header, missing))
    plot(study, results, out / "errors.png")
    return results
