"""Building blocks shared by the equivariant layers."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from metanets.weight_space import WeightSpace


def _floor(dtype: torch.dtype) -> float:
    """Squares below this count as zero: above it x ** -1.5 (in the backward of sqrt) stays finite."""
    return torch.finfo(dtype).tiny ** 0.5


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt of a non-negative tensor, with 1 where x is (numerically) zero and a zero gradient there.

    A plain `x.sqrt()` has an infinite derivative at 0, which backpropagates NaN (inf * 0) through any
    norm of an all-zero vector, and ReLU features produce exact zeros routinely; squares of tiny
    nonzero entries (dead units whose weights decayed to ~1e-20) overflow the backward in float32.
    """
    return torch.where(x > _floor(x.dtype), x, torch.ones_like(x)).sqrt()


class _NormaliseChannels(torch.autograd.Function):
    """y = t / |t| over axis 1, with the closed-form backward dt = (dy - y <y, dy>) / |t|.

    Autograd through the elementary ops of a stable normalisation (abs, max, division, squares, and the
    backward of each) makes about a dozen full-size passes; this makes five forward (two of them reads
    only: the max and the min) and four backward, and its backward is finite wherever 1 / |t| is.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        # rescale by the largest |component| first (any positive factor cancels), so the squared norm lies in
        # [1, C]: vectors of dead units whose weights decayed to ~1e-22 neither underflow nor lose digits
        # (amax and amin, and a sum of squares: torch.linalg.vector_norm reduces a non-innermost axis many
        # times slower on CPU)
        top = torch.maximum(t.amax(dim=1, keepdim=True), t.amin(dim=1, keepdim=True).neg())
        ok = top >= torch.finfo(t.dtype).tiny  # 1 / top is then finite in t's dtype
        c = torch.where(ok, top, torch.ones_like(top)).reciprocal()
        u = t * c
        inv = torch.where(ok, c / (u * u).sum(dim=1, keepdim=True).sqrt(), torch.zeros_like(top))
        y = t * inv
        ctx.save_for_backward(y, inv)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        y, inv = ctx.saved_tensors
        s = (y * dy).sum(dim=1, keepdim=True)
        return torch.addcmul(dy, y, s, value=-1).mul_(inv)


def normalise_channels(t: torch.Tensor) -> torch.Tensor:
    """Divide each entry's channel vector (axis 1) by its Euclidean norm, so that a positive scale shared
    by the channels cancels exactly.

    The vector is first divided by its largest |component|, so vectors of dead units whose weights decayed
    to ~1e-22 (squares denormal in float32) are normalised exactly too. Vectors whose largest component
    is below the dtype's smallest normal number (in particular all-zero ones) map to zero with a zero
    gradient. The backward is closed-form and finite (see `_NormaliseChannels`); it is not
    differentiable twice.
    """
    return _NormaliseChannels.apply(t)


class ChannelLinear(nn.Module):
    """A linear map over axis 1 (channels) of a tensor (B, C_in, *rest) -> (B, C_out, *rest).

    `bias=False` keeps the map homogeneous, which scale- and sign-equivariant layers need.
    """

    def __init__(self, c_in: int, c_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        bound = 1.0 / math.sqrt(c_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.movedim(1, -1), self.weight, self.bias).movedim(-1, 1)


def flat_kernel(w: torch.Tensor) -> torch.Tensor:
    """(B, C, n, m, *kernel) -> (B, C*s, n, m): kernel positions ride along as extra channels."""
    B, C, n, m = w.shape[:4]
    if w.ndim == 4:
        return w
    return w.movedim((2, 3), (-2, -1)).reshape(B, -1, n, m)


def unflat_kernel(x: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `flat_kernel`: (B, C*s, n, m) -> (B, C, n, m, *kernel)."""
    if not kernel:
        return x
    B, _, n, m = x.shape
    return x.reshape(B, -1, *kernel, n, m).movedim((-2, -1), (2, 3))


def in_memory_order(fn, t: torch.Tensor) -> torch.Tensor:
    """`fn(t)` for an elementwise `fn`, computed on `t` permuted to its memory order and permuted back.

    The channel maps leave their outputs channel-last in memory behind a channel-first view
    (`ChannelLinear`). Eager elementwise ops keep such strides anyway; TorchInductor instead lays its
    outputs out in the logical order, so it would transpose every activation twice (once to the logical
    order, once back for the next matrix product), with a scalar gather. On the permuted, contiguous view
    both agree. Strides are read at trace time (shapes are static per compiled graph).
    """
    order = sorted(range(t.ndim), key=t.stride, reverse=True)  # stable: equal strides keep their order
    if order == list(range(t.ndim)):
        return fn(t)
    inverse = sorted(range(t.ndim), key=order.__getitem__)
    return fn(t.permute(order)).permute(inverse)


class WSActivation(nn.Module):
    """An elementwise nonlinearity applied to every tensor of a weight space, in each tensor's memory order
    (`in_memory_order`)."""

    def __init__(self, fn: str = "relu"):
        super().__init__()
        self.fn = {"relu": torch.relu, "tanh": torch.tanh, "identity": lambda t: t}[fn]

    def forward(self, ws: WeightSpace) -> WeightSpace:
        return ws.map(lambda t: in_memory_order(self.fn, t))


def mlp(d_in: int, hidden: int, d_out: int, depth: int = 2) -> nn.Sequential:
    """A plain ReLU MLP with `depth` hidden layers."""
    dims = [d_in] + [hidden] * depth
    mods: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    mods.append(nn.Linear(dims[-1], d_out))
    return nn.Sequential(*mods)


class TensorRMSNorm(nn.Module):
    """Divide every tensor of each network by its root-mean-square (per batch row and channel).

    The RMS of a tensor is unchanged by permutations and sign flips, so this keeps equivariance for the
    perm and perm_sign groups (not for positive scalings). It puts networks whose weights live at very
    different scales (SIREN hidden layers are ~1e-2) on a common footing before the first layer.
    """

    def forward(self, ws: WeightSpace) -> WeightSpace:
        def norm(t: torch.Tensor) -> torch.Tensor:
            rms = safe_sqrt(t.reshape(t.shape[0], t.shape[1], -1).square().mean(dim=2))
            return t / rms.reshape(*rms.shape, *([1] * (t.ndim - 2)))

        return ws.map(norm)
