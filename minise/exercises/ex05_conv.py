"""Exercise 05: im2col, col2im and the convolution's backward,
``conv2d_backward(gy, x, w, stride, padding) -> (dx, dw, db)``.

Checked against minise's ``im2col``/``col2im`` and ``minise.functional.conv2d`` (forward, and backward
with float64 central differences); the hints recognise rows of im2col in the wrong order, col2im
overwriting where windows overlap, a transposed weight gradient and a bias gradient not summed over
the pixels.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

import minise.functional as F
from minise.exercises.core import (
    AnyOf,
    Case,
    Exercise,
    Mistake,
    Report,
    draw_cases,
    engine_forward,
    engine_gradients,
    grade_function,
    learner_function,
    numerical_gradient,
    rng_for,
    shape_text,
)
from minise.functional import im2col as minise_im2col

SOLUTION = '''"""Exercise 05: convolution as im2col + one matrix product, and its backward (lesson 05).

Start over:        python -m minise.lessons exercise 05 --force   (this file is kept as .bak)
Check it:          python -m minise.lessons check 05
Train with it:     python -m minise.lessons check 05 --train   (every convolution of an SE-ResNet-20 is yours)

Shapes: x (N, C, H, W); w (O, C, KH, KW); b (O,) or None; stride s and padding p, the same along
both axes; OH = (H + 2p - KH) // s + 1, OW likewise, and P = OH * OW output pixels; y and gy
(N, O, OH, OW). Write it without a Python loop over images or pixels: a loop over the KH x KW kernel
offsets is fine.
"""

import numpy as np


def im2col(x, kh, kw, stride, padding):
    """x (N, C, H, W) -> cols (N, C*KH*KW, P), P = OH*OW.

    Column i*OW + j holds the window under output pixel (i, j); row c*KH*KW + a*KW + b holds
        x_pad[n, c, i*s + a, j*s + b]      (s the stride, x_pad is x with p zeros on each side)
    (the layout of w.reshape(O, C*KH*KW), so that the convolution is one matrix product).
    """
    n, c, h, w = x.shape
    oh, ow = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    # >>> your code
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for a in range(kh):
        for b in range(kw):
            rows = slice(a, a + stride * (oh - 1) + 1, stride)  # the rows window offset a reads
            columns = slice(b, b + stride * (ow - 1) + 1, stride)
            cols[:, :, a, b] = x_pad[:, :, rows, columns]
    return cols.reshape(n, c * kh * kw, oh * ow)
    # <<<


def col2im(cols, x_shape, kh, kw, stride, padding):
    """The adjoint of im2col: cols (N, C*KH*KW, P) -> (N, C, H, W).

    Every value of cols goes back to the pixel it was copied from; a pixel under several windows
    receives the sum of all of them. The padding is cut away at the end.
    """
    n, c, h, w = x_shape
    oh, ow = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    cols6 = cols.reshape(n, c, kh, kw, oh, ow)
    # >>> your code
    x_pad = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for a in range(kh):
        for b in range(kw):
            rows = slice(a, a + stride * (oh - 1) + 1, stride)
            columns = slice(b, b + stride * (ow - 1) + 1, stride)
            x_pad[:, :, rows, columns] += cols6[:, :, a, b]
    return x_pad[:, :, padding : padding + h, padding : padding + w]
    # <<<


def conv2d_forward(x, w, b, stride, padding):
    """y = W cols + b per image (given: it uses your im2col)."""
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    cols = im2col(x, kh, kw, stride, padding)  # (N, C*KH*KW, P)
    y = w.reshape(o, -1) @ cols  # (N, O, P)
    if b is not None:
        y = y + b.reshape(1, o, 1)
    return y.reshape(n, o, oh, ow)


def conv2d_backward(gy, x, w, stride, padding):
    """Return (dx, dw, db) given gy = dL/dy (N, O, OH, OW). Per image n, with cols_n = im2col(x)[n]:
        dW = sum_n gy_n cols_n^T      (O, C*KH*KW), reshaped to w's shape (O, C, KH, KW)
        db = sum of gy over n, OH, OW (O,)
        dx = col2im(W^T gy_n)         W = w.reshape(O, C*KH*KW)
    """
    n = x.shape[0]
    o, _, kh, kw = w.shape
    cols = im2col(x, kh, kw, stride, padding)  # (N, C*KH*KW, P)
    gy3 = gy.reshape(n, o, -1)  # (N, O, P)
    # >>> your code
    dw = (gy3 @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)
    db = gy.sum(axis=(0, 2, 3))
    dx = col2im(w.reshape(o, -1).T @ gy3, x.shape, kh, kw, stride, padding)
    return dx, dw, db
    # <<<
'''

ORDER_HINT = (
    "the rows of cols are in the wrong order: row c*KH*KW + a*KW + b must hold channel c at kernel offset "
    "(a, b), the layout of w.reshape(O, C*KH*KW) (build cols as (N, C, KH, KW, OH, OW), then reshape)"
)
OVERLAP_HINT = (
    "where windows overlap (stride < kernel) a pixel was copied into several columns: col2im must add "
    "them all back (+=), not overwrite"
)
DW_T_HINT = (
    "your dw is sum_n cols gy^T, the transpose (C*KH*KW, O) of the weight gradient, reshaped to w's shape: "
    "the weight gradient is dW = sum_n gy_n cols_n^T (O, C*KH*KW), laid out like w"
)
DW_MEAN_HINT = (
    "dw is a sum over the images, not a mean: every image adds its own gy_n cols_n^T to the weight's gradient "
    "(a mean loss already carries its 1/N in gy): .sum(axis=0)"
)
DB_HINT = "db sums gy over the images AND the pixels: gy.sum(axis=(0, 2, 3)), one number per output channel"
DB_MEAN_HINT = (
    "db is a sum, not a mean: b is added at every pixel of every image, so each of them adds its gy to db: "
    "gy.sum(axis=(0, 2, 3))"
)


def _shapes(draw: Any) -> dict[str, Any]:
    k, s, p = draw(1, 3), draw(1, 2), draw(0, 1)
    oh, ow = draw(1, 3), draw(1, 3)
    h, w = (oh - 1) * s + k - 2 * p + draw(0, s - 1), (ow - 1) * s + k - 2 * p
    if h < 1 or w < 1:
        p, h, w = 0, (oh - 1) * s + k, (ow - 1) * s + k
    return {"n": draw(1, 2), "c": draw(1, 3), "o": draw(1, 3), "k": k, "s": s, "p": p, "h": h, "w": w}


EDGE = [
    {"n": 1, "c": 2, "o": 3, "k": 3, "s": 1, "p": 1, "h": 4, "w": 3},  # batch 1, overlapping windows
    {"n": 2, "c": 1, "o": 1, "k": 2, "s": 2, "p": 0, "h": 4, "w": 4},  # one channel
    {"n": 2, "c": 3, "o": 2, "k": 1, "s": 1, "p": 0, "h": 1, "w": 1},  # 1x1 spatial
    {"n": 2, "c": 2, "o": 2, "k": 3, "s": 1, "p": 0, "h": 3, "w": 3},  # the kernel covers the input
    {"n": 1, "c": 2, "o": 2, "k": 3, "s": 2, "p": 1, "h": 5, "w": 4},  # stride 2 with padding
]


def _cols(x: Any, k: int, s: int, p: int) -> Any:
    return minise_im2col.im2col(x, (k, k), (s, s), (p, p), (1, 1))


def _col2im_overwrite(cols: Any, shape: Any, k: int, s: int, p: int) -> Any:
    n, c, h, w = shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    cols6 = cols.reshape(n, c, k, k, oh, ow)
    xpad = np.zeros((n, c, h + 2 * p, w + 2 * p))
    for a in range(k):
        for b in range(k):
            xpad[:, :, a : a + s * (oh - 1) + 1 : s, b : b + s * (ow - 1) + 1 : s] = cols6[:, :, a, b]
    return xpad[:, :, p : p + h, p : p + w]


def make_cases() -> tuple[list[Case], list[Case], list[Case], list[Case]]:
    """Cases for im2col, col2im, conv2d_forward and conv2d_backward."""
    im, ci, fw, bw = [], [], [], []
    for i, sh in enumerate(draw_cases(_shapes, EDGE)):
        rng = rng_for(i)
        n, c, o, k, s, p = sh["n"], sh["c"], sh["o"], sh["k"], sh["s"], sh["p"]
        x = rng.standard_normal((n, c, sh["h"], sh["w"]))
        w, b = rng.standard_normal((o, c, k, k)), rng.standard_normal(o)
        where = shape_text(x=x, w=w) + f", stride {s}, padding {p}"
        cols = _cols(x, k, s, p)
        length = cols.shape[2]
        by_offset = cols.reshape(n, c, k * k, length).transpose(0, 2, 1, 3).reshape(n, -1, length)
        im.append(Case(where, (x, k, k, s, p), {"cols": cols}, variants={ORDER_HINT: {"cols": by_offset}}))
        g_cols = rng.standard_normal(cols.shape)
        back = minise_im2col.col2im(g_cols, x.shape, (k, k), (s, s), (p, p), (1, 1))
        ci.append(
            Case(
                where,
                (g_cols, x.shape, k, k, s, p),
                {"x": back},
                variants={OVERLAP_HINT: {"x": _col2im_overwrite(g_cols, x.shape, k, s, p)}},
            )
        )
        y = engine_forward(lambda x_, w_, b_, s=s, p=p: F.conv2d(x_, w_, b_, s, p), [x, w, b])
        fw.append(Case(where, (x, w, b, s, p), {"y": y}))
        gy = rng.standard_normal(y.shape)
        _, (dx, dw, db) = engine_gradients(lambda x_, w_, b_, s=s, p=p: F.conv2d(x_, w_, b_, s, p), [x, w, b], gy)
        inputs = (x, w, b)

        def numeric(a: Any, inputs: Any = inputs, gy: Any = gy, s: int = s, p: int = p) -> Any:
            return lambda: numerical_gradient(lambda: F.conv2d(inputs[0], inputs[1], inputs[2], s, p).numpy(), a, gy)

        gy3 = gy.reshape(n, o, -1)
        bw.append(
            Case(
                where,
                (gy, x, w, s, p),
                {"dx": dx, "dw": dw, "db": db},
                numeric={k_: numeric(a) for k_, a in zip(("dx", "dw", "db"), inputs)},
                variants={
                    DW_T_HINT: {"dw": (cols @ gy3.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)},
                    DW_MEAN_HINT: {"dw": dw / n},
                    DB_HINT: {"db": AnyOf(gy.sum(axis=0), gy3.sum(axis=0))},
                    DB_MEAN_HINT: {"db": AnyOf(gy.mean(axis=(0, 2, 3)), gy.sum(axis=0).mean(axis=(1, 2)))},
                    OVERLAP_HINT: {"dx": _col2im_overwrite(w.reshape(o, -1).T @ gy3, x.shape, k, s, p)},
                },
            )
        )
    return im, ci, fw, bw


def check(module: ModuleType, report: Report) -> None:
    im, ci, fw, bw = make_cases()
    grade_function(report, "im2col", learner_function(module, "im2col"), ("cols",), im, "minise's im2col")
    grade_function(report, "col2im", learner_function(module, "col2im"), ("x",), ci, "minise's col2im")
    forward = learner_function(module, "conv2d_forward")
    grade_function(report, "conv2d_forward (with your im2col)", forward, ("y",), fw, "minise's conv2d")
    grade_function(
        report,
        "conv2d_backward",
        learner_function(module, "conv2d_backward"),
        ("dx", "dw", "db"),
        bw,
        "minise's conv2d and central differences",
    )


def train(module: ModuleType, steps: int, echo: bool) -> bool:
    from minise.exercises.training import compare_training, conv_with  # noqa: PLC0415

    op = conv_with(learner_function(module, "conv2d_forward"), learner_function(module, "conv2d_backward"))
    return compare_training("conv2d", op, steps, echo)


EXERCISE = Exercise(
    number=5,
    title="im2col and the convolution's backward: conv2d_backward",
    filename="ex05_conv.py",
    solution=SOLUTION,
    check=check,
    train=train,
    mistakes=(
        Mistake(
            "col2im overwrites",
            "x_pad[:, :, rows, columns] += cols6[:, :, a, b]",
            "x_pad[:, :, rows, columns] = cols6[:, :, a, b]",
            "must add",
        ),
        Mistake(
            "transposed weight gradient",
            "dw = (gy3 @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)",
            "dw = (cols @ gy3.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)",
            "transpose (C*KH*KW, O) of the weight gradient",
        ),
        Mistake("db over the batch only", "db = gy.sum(axis=(0, 2, 3))", "db = gy.sum(axis=0)", "AND the pixels"),
        Mistake(  # a fresh reader's: db of shape (O, P), and db as a mean; neither got a hint
            "db of shape (O, P)", "db = gy.sum(axis=(0, 2, 3))", "db = gy3.sum(axis=0)", "AND the pixels"
        ),
        Mistake(  # a fresh reader's: it failed (relative error exactly 0.5) without a hint
            "dw a mean over the images",
            "dw = (gy3 @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)",
            "dw = (gy3 @ cols.transpose(0, 2, 1)).mean(axis=0).reshape(w.shape)",
            "dw is a sum over the images, not a mean",
        ),
        Mistake("db a mean", "db = gy.sum(axis=(0, 2, 3))", "db = gy.mean(axis=(0, 2, 3))", "db is a sum, not a mean"),
        Mistake(  # a fresh reader's: it passed while no checker watched the inputs
            "gy, x and w zeroed in place",
            "    return dx, dw, db\n",
            "    gy[...] = 0\n    x[...] = 0\n    w[...] = 0\n    return dx, dw, db\n",
            "conv2d_backward changed gy, the array it was given",
        ),
    ),
)
