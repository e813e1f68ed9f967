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


def _inverse_top(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per entry, whether the largest |component| over axis 1 is a normal number (`ok`), and 1 / it (1 where
    not): the stable normalisations' first step, two reads (amax and amin)."""
    top = torch.maximum(t.amax(dim=1, keepdim=True), t.amin(dim=1, keepdim=True).neg())
    ok = top >= torch.finfo(t.dtype).tiny  # 1 / top is then finite in t's dtype
    return ok, torch.where(ok, top, torch.ones_like(top)).reciprocal()


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
        ok, c = _inverse_top(t)
        u = t * c
        inv = torch.where(ok, c / (u * u).sum(dim=1, keepdim=True).sqrt(), torch.zeros_like(c))
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


def _group_sums(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C*k, *rest) -> (B, C, *rest): the sums over each group of k consecutive channels.

    When axis 1 is x's innermost axis in memory (the channel maps' outputs are), the sums are one
    matrix-vector product on x's memory: on this CPU a reduction over an axis of 9 ran about 10x slower
    (8.3 ms against 0.8 ms on a (64, 144, 16, 16) tensor, one thread)."""
    if k == 1:
        return x
    shape = (x.shape[0], x.shape[1] // k, *x.shape[2:])
    order = sorted(range(x.ndim), key=x.stride, reverse=True)
    if order[-1] == 1 and x.stride(1) == 1 and x.permute(order).is_contiguous():
        flat = x.permute(order).reshape(-1, k) @ torch.ones(k, dtype=x.dtype, device=x.device)
        sums = flat.reshape(*(shape[d] for d in order))  # in memory order, axis 1 (now C) last
        return sums.permute(sorted(range(x.ndim), key=order.__getitem__))
    return x.unflatten(1, (shape[1], k)).sum(dim=2)


class _NormaliseScaledChannels(torch.autograd.Function):
    """y = z / |z| over axis 1 for z = t * f, f a positive factor per group of `k` consecutive channels.

    t is (B, C*k, *rest) and f (B, C, *rest): each of t's C channel groups (a channel and its kernel
    positions, `flat_kernel`) is multiplied by its own factor. The product z is never materialised: the
    factor joins the per-entry constant of the stable normalisation, and its gradient comes from sums the
    backward makes anyway. With p_c = sum_k y dy and q_c = sum_k y^2 over a group, and s = sum_c p_c:
    dz = (dy - y s) / |z|, dt = dz f, and df_c = sum_k dz t = (p_c - s q_c) / f_c. So the quasi layer's
    scaling, folded into the pool's normalisation, writes no scaled feature and needs no full-size pass
    for the factor's gradient; scaling first took three more (the product, and in the backward the
    gradients of the feature and of the factor).
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, f: torch.Tensor, k: int) -> torch.Tensor:
        C = f.shape[1]
        # 1 / the largest |component| of t (not of z): f is bounded away from 0 and infinity (alpha's range), so
        # |z|^2 / top^2 stays far from under- and overflow, and dead units' tiny vectors are handled as before
        ok, c = _inverse_top(t)
        cf = c * f  # (B, C, *rest)
        y = torch.empty_like(t)  # t's memory layout (channel-last behind the view), as t * scalar would keep
        torch.mul(t.unflatten(1, (C, k)), cf.unsqueeze(2), out=y.unflatten(1, (C, k)))
        q = _group_sums(y * y, k)  # (B, C, *rest): per group, then over the groups
        r = torch.where(ok, q.sum(dim=1, keepdim=True).rsqrt(), torch.zeros_like(c))
        y.mul_(r)
        ctx.k = k
        ctx.save_for_backward(y, cf * r, f, q * (r * r))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        y, inv, f, q = ctx.saved_tensors
        C = f.shape[1]
        p = _group_sums(y * dy, ctx.k)
        s = p.sum(dim=1, keepdim=True)
        dt = torch.addcmul(dy, y, s, value=-1)
        dt.unflatten(1, (C, ctx.k)).mul_(inv.unsqueeze(2))
        return dt, (p - s * q) / f, None


def normalise_scaled_channels(t: torch.Tensor, f: torch.Tensor, k: int = 1) -> torch.Tensor:
    """`normalise_channels(t * f')`, where f' repeats each channel factor of f (B, C, *rest) over `k`
    consecutive channels of t (B, C*k, *rest), without forming the product (`_NormaliseScaledChannels`).

    f must be positive and finite (a scaling-group element, e.g. alpha's 1 + eps sin(.)); it may be a
    broadcast (expanded) view. Differentiable once, in t and f.
    """
    if t.shape[1] != f.shape[1] * k or t.shape[2:] != f.shape[2:] or t.shape[0] != f.shape[0]:
        raise ValueError(f"normalise_scaled_channels: t {tuple(t.shape)} needs f of shape "
                         f"({t.shape[0]}, {t.shape[1]} / k={k}, *{tuple(t.shape[2:])}), got {tuple(f.shape)}")
    return _NormaliseScaledChannels.apply(t, f, k)


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


@torch.library.custom_op("metazoo::relu_backward", mutates_args=())
def _relu_backward_op(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """ReLU's gradient from its output, by eager's kernel: an operator TorchInductor cannot look into."""
    result = torch.empty_like(grad)
    return torch.ops.aten.threshold_backward.grad_input(grad, out, 0.0, grad_input=result)


@_relu_backward_op.register_fake
def _(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(grad)


class _ReLUSavingOutput(torch.autograd.Function):
    """torch.relu whose backward reads the saved float output through `metazoo::relu_backward`."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = torch.relu(t)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return _relu_backward_op(grad, out)


def relu(t: torch.Tensor) -> torch.Tensor:
    """`torch.relu(t)`, whose backward, under `torch.compile` on CPU, keeps the output rather than a bool mask.

    Compiled as it is, AOTAutograd's partitioner saves ReLU's backward mask `t <= 0` as a bool tensor
    computed in the forward, and the CPU kernel inductor writes for a ReLU and its bool mask in one loop
    was 13-19x slower than eager's ReLU (`bench/inductor_mask.py`, docs/training.md). Here the forward is
    still inductor's (fused, one vectorised loop), but the backward is a custom operator that needs the
    float output, so the partitioner keeps that and never forms the mask; the operator runs eager's
    `threshold_backward`. Values and gradients are torch.relu's. Eager, under `torch.export` (MLflow's pt2
    files must load where `metazoo::relu_backward` is not registered) and on other devices it is
    `torch.relu` itself.
    """
    if t.device.type == "cpu" and torch.compiler.is_compiling() and not torch.compiler.is_exporting():
        return _ReLUSavingOutput.apply(t)
    return torch.relu(t)


class WSActivation(nn.Module):
    """An elementwise nonlinearity applied to every tensor of a weight space, in each tensor's memory order
    (`in_memory_order`); ReLU is `relu` above."""

    def __init__(self, fn: str = "relu"):
        super().__init__()
        self.fn = {"relu": relu, "tanh": torch.tanh, "identity": lambda t: t}[fn]

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
