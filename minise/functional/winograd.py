"""Winograd minimal filtering for 3x3, stride-1 convolutions: F(2x2, 3x3) and F(4x4, 3x3).

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). Lesson 05 derives it.

**1-D: F(2, 3).** Two outputs of a 3-tap correlation, y0 = d0 g0 + d1 g1 + d2 g2 and
y1 = d1 g0 + d2 g1 + d3 g2, take 6 multiplications directly. Toom-Cook: y is the product of the
polynomials g(t) = g0 + g1 t + g2 t^2 and d read backwards, so evaluate both at the points 0, 1, -1 and
infinity, multiply there (4 multiplications), and interpolate back. Written as matrices,

    y = A^T [ (G g) * (B^T d) ]          (* elementwise; 4 multiplications, the rest are additions)

    B^T = [1  0 -1  0]     G = [ 1    0    0 ]     A^T = [1  1  1  0]
          [0  1  1  0]         [1/2  1/2  1/2]           [0  1 -1 -1]
          [0 -1  1  0]         [1/2 -1/2  1/2]
          [0  1  0 -1]         [ 0    0    1 ]

e.g. m1 = (d0 - d2) g0, m2 = (d1 + d2)(g0 + g1 + g2)/2, m3 = (d2 - d1)(g0 - g1 + g2)/2,
m4 = (d1 - d3) g2, and y0 = m1 + m2 + m3, y1 = m2 - m3 - m4.

**2-D by nesting: F(2x2, 3x3).** Apply the 1-D algorithm along the rows and then along the columns of a
4x4 input tile d and the 3x3 kernel g:

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (a 2x2 output tile from a 4x4 input tile)

16 multiplications per 2x2 outputs instead of 4 * 9 = 36 (2.25x fewer). F(4x4, 3x3) uses the points
0, 1, -1, 2, -2, infinity: 6x6 input tiles, 36 multiplications per 16 outputs instead of 144 (4x fewer),
with larger constants in its matrices and so a larger float32 rounding error (measured in the tests).

**Over channels and a batch.** With U = G g G^T per (out, in) channel pair (K, C, a, a) and
V = B^T d B per input tile (C, a, a), the channel sum of the convolution happens at each of the a*a
transformed positions xi separately: M[xi] = U[xi] V[xi], one (K, C) x (C, tiles) GEMM per position.
So the work is: transform every input tile (additions only), a*a batched GEMMs, transform back.

**Gradients.** The forward is linear in both the input and the weight, so:
    dx = a Winograd convolution of gy, padded by 2 - p, with the kernel flipped in space and in/out
         channels swapped (as for im2col's stride-1 input gradient);
    dW = G^T dU G,  dU[xi] = sum_tiles dM[xi] V[xi]^T,  dM = A dY A^T per output tile
         (the adjoint of each step of the forward, in reverse: the weight gradient's own transform).

**Layout.** Each chunk of images is first copied, padded, into a pixel-major layout (H, W, n, C), so that
the tiles' entries are strided slices xpad[r::m, col::m] whose innermost n*C values are contiguous (in
(n, C, H, W) those slices would be runs of a few pixels, and NumPy's per-run overhead dominated); the
GEMMs then read V as (tiles*n, C) matrices and the output is transposed back once. Outputs that do not
fill a last tile are computed and cropped. The transforms are small matrix products too: B^T, A^T (a x a,
m x a) times the stacked strided views of the axis they sum over. No loop over images or pixels: the loops
below only gather the a (or m) views of one axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minise import backend, cpu
from minise.backend import get_array_module

# The matrices are plain host constants (lists; the ops turn them into arrays of the data's module and dtype).
Matrix = list[list[float]]

# F(2, 3): points 0, 1, -1, infinity
BT_2: Matrix = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
G_2: Matrix = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
AT_2: Matrix = [[1, 1, 1, 0], [0, 1, -1, -1]]

# F(4, 3): points 0, 1, -1, 2, -2, infinity (Lavin & Gray, Sec. 4.2)
BT_4: Matrix = [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
]
G_4: Matrix = [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
]
AT_4: Matrix = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]

TRANSFORMS: dict[int, tuple[Matrix, Matrix, Matrix]] = {2: (BT_2, G_2, AT_2), 4: (BT_4, G_4, AT_4)}


def _matrix(xp: Any, mat: Matrix, dtype: Any) -> Any:
    """A transform matrix (B^T, G or A^T, host lists) as an array of the data's module and dtype."""
    return xp.asarray(mat, dtype=dtype)


def _kron_g(xp: Any, m: int, dtype: Any) -> Any:
    """kron(G, G) (a*a, 9): entry (i a + j, 3 r + s) = G[i, r] G[j, s]."""
    g = _matrix(xp, TRANSFORMS[m][1], dtype)  # (a, 3)
    a = g.shape[0]
    return (g[:, None, :, None] * g[None, :, None, :]).reshape(a * a, 9)


def tile_grid(h: int, w: int, padding: tuple[int, int], m: int) -> tuple[int, int, int, int]:
    """(OH, OW, TH, TW): output size of a 3x3 stride-1 convolution and how many m x m tiles cover it."""
    oh, ow = h + 2 * padding[0] - 2, w + 2 * padding[1] - 2
    return oh, ow, -(-oh // m), -(-ow // m)


def pixel_major(x: Any, top: int, left: int, height: int, width: int) -> Any:
    """x (n, C, H, W) -> zeros (height, width, n, C) holding x at rows top.., columns left.. (negative
    offsets crop x). One transposing copy, so that every pixel's n*C values lie side by side."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    out = xp.zeros((height, width, n, c), dtype=x.dtype)
    r0, c0 = max(top, 0), max(left, 0)  # where x lands in out
    sr, sc = max(-top, 0), max(-left, 0)  # where it starts in x
    rows, cols = min(h - sr, height - r0), min(w - sc, width - c0)
    if rows > 0 and cols > 0:
        out[r0 : r0 + rows, c0 : c0 + cols] = x[:, :, sr : sr + rows, sc : sc + cols].transpose(2, 3, 0, 1)
    return out


def weight_transform(w: Any, m: int) -> Any:
    """U = G g G^T for every (out, in) channel pair, transposed for the GEMMs:
    w (K, C, 3, 3) -> U^T (a, a, C, K), a = m + 2.

    U[i, j] = sum_rs G[i, r] G[j, s] g[r, s] is a product with the Kronecker product of G with itself,
    kron(G, G) (a*a, 9), entry (i a + j, 3 r + s) = G[i, r] G[j, s]. Two steps:

    1. w, seen as a (K, 9 C) matrix, transposed into wt (9 C, K) = (C, 9, K): wt[c, 3 r + s, k] = w[k, c, r, s]
       (one copy of the weight, in strips that stay in cache: ``cpu.transpose_into``);
    2. for each input channel c, kron(G, G) (a*a, 9) @ wt[c] (9, K) = U[:, c, :] (a*a, K): one batched
       product whose result u (C, a*a, K) holds U^T[i, j, c, k] at u[c, i a + j, k].

    U^T is returned as a view of u, (a, a, C, K) with a stride of a*a*K between input channels: each
    transformed position's (C, K) matrix is one that BLAS reads in place (its rows lie a*a*K values apart
    instead of K; a row stride is just a leading dimension), so on NumPy U^T is never copied into a layout of
    its own (CuPy's matmul copies a strided operand to a contiguous one itself; on the GPU Winograd only runs
    when forced, ``choose_algorithm``).
    It runs in blocks of input channels on the CPU cores (``cpu.run_chunks``, BLAS held to one thread): a
    BLAS call on its own threads between the chunked passes leaves OpenBLAS's threads spinning while
    minise's want the cores (measured: it made F(2x2) on 64 channels 1.5x slower than im2col on two cores
    instead of faster). Against the earlier (a*a, 9) @ (9, K C) product and a transposing copy of its a*a times
    larger result, two cores, medians of 5 alternating rounds: 64 -> 64 F(4x4) 175 -> 65 us, 512 -> 512 F(2x2)
    6.8 -> 3.2 ms; the adjoint (``weight_grad_from_transformed``) 413 -> 87 us and 12.2 -> 3.1 ms.
    """
    xp = get_array_module(w)
    k, c = w.shape[:2]
    a = m + 2
    gg = _kron_g(xp, m, w.dtype)  # (a*a, 9)
    by_rows = w.reshape(k, c * 9)  # (K, 9 C): row k, columns (c, r, s)
    wt = xp.empty((c, 9, k), dtype=w.dtype)
    u = xp.empty((c, a * a, k), dtype=w.dtype)

    def work(s: int, z: int) -> None:
        cpu.transpose_into(by_rows[:, 9 * s : 9 * z], wt[s:z].reshape(9 * (z - s), k))
        xp.matmul(gg, wt[s:z], out=u[s:z])  # (a*a, 9) @ (z - s, 9, K): U^T for input channels s..z

    cpu.run_chunks(xp, c, cpu.chunk_size(xp, c, (a * a + 9) * k * w.itemsize), work)  # u's and wt's share
    return u.transpose(1, 0, 2).reshape(a, a, c, k)  # a view: [i, j, c, k] = u[c, i a + j, k]


def input_transform(xpad: Any, m: int, th: int, tw: int) -> Any:
    """V = B^T d B for every input tile d: xpad (TH*m+2, TW*m+2, n, C) -> V (a, a, TH, TW, n, C).

    Tile (th, tw) is xpad[m th : m th + a, m tw : m tw + a], so entry (r, col) of every tile at once is
    the strided view xpad[r::m, col::m] (TH, TW, n, C). The 1-D transform runs along the width for whole
    padded rows, z[j] = sum_col BT[j, col] xpad[:, col::m], then along the height,
    V[i, j] = sum_r BT[i, r] z[j][r::m]. Each is one small matrix product: the a strided views are stacked
    (one copy, every run n*C values long) into an (a, everything else) matrix, and B^T (a, a) multiplies it
    from the left. No tile is ever copied out on its own, and two products replace the a + a*a linear
    combinations (each one or more NumPy passes) that the formula lists: for F(4x4, 3x3), whose B^T has
    entries 4, -5, 2, those were about 100 passes per chunk (measured, one core, 16 images of 64 channels on
    8x8: 0.50 -> 0.12 ms).
    """
    xp = get_array_module(xpad)
    bt = _matrix(xp, TRANSFORMS[m][0], xpad.dtype)  # (a, a)
    a = bt.shape[0]
    hp, _, n, c = xpad.shape
    cols = xp.stack([xpad[:, col : col + m * (tw - 1) + 1 : m] for col in range(a)])  # (a, Hp, TW, n, C)
    z = (bt @ cols.reshape(a, -1)).reshape(a, hp, tw, n, c)  # z[j] = sum_col BT[j, col] xpad[:, col::m]
    rows = xp.stack([z[:, r : r + m * (th - 1) + 1 : m] for r in range(a)])  # (a_r, a_j, TH, TW, n, C)
    return (bt @ rows.reshape(a, -1)).reshape(a, a, th, tw, n, c)  # V[i, j] = sum_r BT[i, r] z[j][r::m]


def output_transform(mm: Any, m: int) -> Any:
    """Y = A^T M A for every tile: mm (a, a, TH, TW, n, K) -> y (TH, m, TW, m, n, K).

    s[u, j] = sum_i AT[u, i] M[i, j] is one product A^T (m, a) @ M (a, everything else); then for each u,
    Y[u, v] = sum_j AT[v, j] s[u, j] is another (a batched matmul over u), written into the tile layout."""
    xp = get_array_module(mm)
    at = _matrix(xp, TRANSFORMS[m][2], mm.dtype)  # (m, a)
    a = at.shape[1]
    th, tw, n, k = mm.shape[2:]
    s = (at @ mm.reshape(a, -1)).reshape(m, a, -1)  # (u, j, TH*TW*n*K)
    t = xp.matmul(at, s)  # (u, v, TH*TW*n*K): Y[u, v] for every tile
    y = xp.empty((th, m, tw, m, n, k), dtype=mm.dtype)
    y[...] = t.reshape(m, m, th, tw, n, k).transpose(2, 0, 3, 1, 4, 5)  # runs of n*K values
    return y


def output_adjoint(gy6: Any, m: int) -> Any:
    """dM = A dY A^T for every output tile (the adjoint of ``output_transform``):
    gy6 (TH, m, TW, m, n, K) -> dM (a, a, TH, TW, n, K).

    s[i, v] = sum_u AT[u, i] dY[u, v] and dM[i, j] = sum_v AT[v, j] s[i, v]: two products with A (a, m),
    each on the m strided views of its summed axis stacked into a matrix, as in ``input_transform``."""
    xp = get_array_module(gy6)
    a_ = _matrix(xp, TRANSFORMS[m][2], gy6.dtype).T  # A (a, m)
    a = a_.shape[0]
    th, _, tw, _, n, k = gy6.shape
    by_u = xp.stack([gy6[:, u] for u in range(m)])  # (m_u, TH, TW, m_v, n, K)
    s = (a_ @ by_u.reshape(m, -1)).reshape(a, th, tw, m, n, k)  # s[i, ..., v, ...]
    by_v = xp.stack([s[:, :, :, v] for v in range(m)])  # (m_v, a_i, TH, TW, n, K)
    dm_ji = (a_ @ by_v.reshape(m, -1)).reshape(a, a, th, tw, n, k)  # dM[i, j] at [j, i]
    return dm_ji.transpose(1, 0, 2, 3, 4, 5)


def input_tiles(x: Any, padding: tuple[int, int], m: int) -> Any:
    """The overlapping (m+2) x (m+2) input tiles, stride m, as a strided view (n, C, TH, TW, a, a) of the
    padded input: tile (th, tw) = xpad[..., m th : m th + a, m tw : m tw + a]. (For reading and lessons;
    ``input_transform`` takes the same values as strided slices of the padded input.)"""
    n, c, h, w = x.shape
    _, _, th, tw = tile_grid(h, w, padding, m)
    xpad = pixel_major(x, padding[0], padding[1], th * m + 2, tw * m + 2).transpose(2, 3, 0, 1)  # (n, C, Hp, Wp)
    sn, sc, sh, sw = xpad.strides
    return backend.as_strided(xpad, (n, c, th, tw, m + 2, m + 2), (sn, sc, sh * m, sw * m, sh, sw))


def conv3x3_chunk(x: Any, ut: Any, padding: tuple[int, int], m: int, out: Any) -> Any:
    """out[...] = conv2d(x, w, padding) for one chunk of images, with U^T = weight_transform(w, m) given;
    returns the chunk's transformed input V (a, a, P, C), which the weight gradient reads again.

    x (n, C, H, W), ut (a, a, C, K), out (n, K, OH, OW).
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    a, k = m + 2, ut.shape[3]
    oh, ow, th, tw = tile_grid(h, w, padding, m)
    xpad = pixel_major(x, padding[0], padding[1], th * m + 2, tw * m + 2)  # (TH*m+2, TW*m+2, n, C)
    v = input_transform(xpad, m, th, tw).reshape(a, a, th * tw * n, c)  # (a, a, P, C), P tiles
    mm = xp.matmul(v, ut)  # (a, a, P, K): one GEMM per transformed position
    y = output_transform(mm.reshape(a, a, th, tw, n, k), m).reshape(th * m, tw * m, n, k)  # (OH+, OW+, n, K)
    if (th * m, tw * m) == (oh, ow) and out.flags.c_contiguous:  # no partial tiles to crop: a 2-D transpose
        cpu.transpose_into(y.reshape(oh * ow, n * k), out.reshape(n * k, oh * ow))
    else:
        out[...] = y[:oh, :ow].transpose(2, 3, 0, 1)  # crop partial tiles; back to (n, K, OH, OW)
    return v


def images_per_chunk(xp: Any, x_shape: tuple[int, ...], k: int, padding: tuple[int, int], m: int, itemsize: int) -> int:
    """Images per chunk: a chunk's transformed input and output, (m+2)^2 (C + K) values per tile, within the
    budget of ``cpu.chunk_size``. The forward and the weight gradient cut the batch alike, so that the
    weight gradient reads each chunk's V from the forward instead of transforming x again."""
    n, c, h, w = x_shape
    _, _, th, tw = tile_grid(h, w, padding, m)
    return cpu.chunk_size(xp, n, (m + 2) ** 2 * (c + k) * th * tw * itemsize)


def conv3x3(
    x: Any,
    w: Any,
    padding: tuple[int, int],
    m: int = 2,
    out: Any = None,
    keep_transformed: bool = False,
    epilogue: Callable[[int, int], None] | None = None,
) -> tuple[Any, list[Any] | None]:
    """y = conv2d(x, w, stride 1, padding) for a 3x3 kernel by Winograd F(m x m, 3x3), in chunks of images.
    Returns y and, with ``keep_transformed``, for each chunk of images start:stop, (start, stop, V) with V
    its transformed input (``conv3x3_chunk``), for the weight gradient; else None, and each chunk's V is
    freed as soon as the chunk is done. ``epilogue(start, stop)``, if given, runs on each chunk of y right
    after it is written (the convolution's bias and fused ReLU, while the chunk is in cache)."""
    xp = get_array_module(x)
    n, c, h, wd = x.shape
    k = w.shape[0]
    oh, ow, th, tw = tile_grid(h, wd, padding, m)
    y = xp.empty((n, k, oh, ow), dtype=x.dtype) if out is None else out
    ut = weight_transform(w, m)
    size = images_per_chunk(xp, x.shape, k, padding, m, x.itemsize)

    def work(s: int, z: int) -> Any:
        v = conv3x3_chunk(x[s:z], ut, padding, m, y[s:z])
        if epilogue is not None:
            epilogue(s, z)
        return (s, z, v) if keep_transformed else None

    transformed = cpu.run_chunks(xp, n, size, work)
    return y, transformed if keep_transformed else None


def weight_grad_chunk(x: Any, gy: Any, padding: tuple[int, int], m: int, v: Any = None) -> Any:
    """dU^T = sum over tiles of V[xi]^T dM[xi] for one chunk: x (n, C, H, W), gy (n, K, OH, OW) -> (a, a, C, K).
    ``v``: the chunk's transformed input from the forward (``conv3x3_chunk``), else transformed here."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    k = gy.shape[1]
    a = m + 2
    _, _, th, tw = tile_grid(h, w, padding, m)
    if v is None:
        xpad = pixel_major(x, padding[0], padding[1], th * m + 2, tw * m + 2)  # (TH*m+2, TW*m+2, n, C)
        v = input_transform(xpad, m, th, tw).reshape(a, a, th * tw * n, c)  # (a, a, P, C)
    gpad = pixel_major(gy, 0, 0, th * m, tw * m)  # (TH*m, TW*m, n, K), zeros past the output
    dm = output_adjoint(gpad.reshape(th, m, tw, m, n, k), m).reshape(a, a, th * tw * n, k)  # (a, a, P, K)
    return xp.matmul(v.transpose(0, 1, 3, 2), dm)  # (a, a, C, K)


def weight_grad_from_transformed(dut: Any, m: int) -> Any:
    """dW = G^T dU G (the adjoint of ``weight_transform``: its two steps backwards, in blocks of input
    channels as it): dU^T (a, a, C, K) -> dW (K, C, 3, 3).

    1. for each input channel c, kron(G, G)^T (9, a*a) @ dU^T[:, :, c, :] (a*a, K) = g[c] (9, K), with
       g[c, 3 r + s, k] = dW[k, c, r, s] (on NumPy dU^T read in place, a row stride of C K);
    2. g, seen as a (9 C, K) matrix, transposed into dW seen as (K, 9 C) (``cpu.transpose_into``)."""
    xp = get_array_module(dut)
    a, _, c, k = dut.shape
    ggt = _kron_g(xp, m, dut.dtype).T  # (9, a*a)
    by_channel = dut.reshape(a * a, c, k).transpose(1, 0, 2)  # (C, a*a, K), a view
    g = xp.empty((c, 9, k), dtype=dut.dtype)
    dw = xp.empty((k, c, 3, 3), dtype=dut.dtype)
    by_rows = dw.reshape(k, c * 9)  # (K, 9 C), a view

    def work(s: int, z: int) -> None:
        xp.matmul(ggt, by_channel[s:z], out=g[s:z])
        cpu.transpose_into(g[s:z].reshape(9 * (z - s), k), by_rows[:, 9 * s : 9 * z])

    cpu.run_chunks(xp, c, cpu.chunk_size(xp, c, (a * a + 9) * k * dut.itemsize), work)  # dU^T's and g's share
    return dw
