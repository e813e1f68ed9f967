"""Permutation-equivariant NFN layers (NP and HNP) and their invariant pooling.

NP treats every neuron, inputs and outputs included, as permutable, so its layers are equivariant to a
larger group than the network's; HNP fixes the input and output neurons and so may mix along those
axes. Both are equivariant to permutations of the hidden neurons, which is what they are tested for.
Aggregations are means, so feature magnitudes do not grow with layer width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from metanets.layers.common import ChannelLinear, flat_kernel, unflat_kernel
from metanets.spec import NetworkSpec
from metanets.weight_space import WeightSpace


def mean(t: torch.Tensor, dim: int | tuple[int, ...], keepdim: bool = False) -> torch.Tensor:
    """`t.mean(dim)` as a sum divided at the reduced size: the backward of `Tensor.mean` writes a full-size
    quotient (the expanded gradient divided by the count), the sum's backward only expands a view."""
    dims = (dim,) if isinstance(dim, int) else dim
    count = 1
    for d in dims:
        count *= t.shape[d]
    return t.sum(dim=dims, keepdim=keepdim) / count


def _means(ws: WeightSpace, cols: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Each weight tensor flattened (B, C*s, n, m) with its row means (B, C*s, n, 1) and column means
    (B, C*s, 1, m; [] when `cols` is false): one full-size reduction per axis, which every other mean is
    taken from."""
    wf = [flat_kernel(w) for w in ws.weights]
    return wf, [mean(w, 3, keepdim=True) for w in wf], [mean(w, 2, keepdim=True) for w in wf] if cols else []


def _global_means(rows: list[torch.Tensor], biases) -> list[torch.Tensor]:
    """Means over the neuron axes of every tensor, (B, C*s_t) each: weights (from their row means), biases."""
    return [mean(r, 2)[..., 0] for r in rows] + [mean(b, 2) for b in biases]


def _io_invariants(rows: list[torch.Tensor], cols: list[torch.Tensor], biases) -> list[torch.Tensor]:
    """Quantities indexed by input/output neurons only (invariant to hidden permutations): the first
    weight's column means, the last weight's row means, the last bias."""
    B = biases[-1].shape[0]
    return [cols[0].reshape(B, -1), rows[-1].reshape(B, -1), biases[-1].reshape(B, -1)]


def _global_width(spec: NetworkSpec, c: int, hnp: bool) -> int:
    width = sum(c * layer.kernel_size for layer in spec.layers) + c * spec.num_layers
    if hnp:
        first, last = spec.layers[0], spec.layers[-1]
        width += c * first.kernel_size * first.n_in + c * last.kernel_size * last.n_out + c * last.n_out
    return width


class NPLinear(nn.Module):
    """One permutation-equivariant layer WeightSpace(C_in) -> WeightSpace(C_out).

    Output weight i sees: W_i, its row and column means, b_i, b_{i-1}, the row means of W_{i-1}, the
    column means of W_{i+1} and global invariants. With `hnp=True` the first layer also mixes along
    its (fixed) input axis, the last layer along its output axis, and input/output-indexed quantities
    join the invariants.
    """

    def __init__(self, spec: NetworkSpec, c_in: int, c_out: int, hnp: bool = False):
        super().__init__()
        self.spec, self.c_in, self.c_out, self.hnp = spec, c_in, c_out, hnp
        L, s = spec.num_layers, [layer.kernel_size for layer in spec.layers]
        g = _global_width(spec, c_in, hnp)
        self.w_maps, self.b_maps = nn.ModuleList(), nn.ModuleList()
        self.glob_w, self.glob_b = nn.ModuleList(), nn.ModuleList()
        for i in range(L):
            w_in = 3 * c_in * s[i] + c_in
            b_in = c_in + c_in * s[i]
            if i > 0:
                w_in += c_in + c_in * s[i - 1]
            if i < L - 1:
                w_in += c_in * s[i + 1]
                b_in += c_in * s[i + 1]
            self.w_maps.append(ChannelLinear(w_in, c_out * s[i]))
            self.b_maps.append(ChannelLinear(b_in, c_out))
            # invariants enter every entry alike: map them once, then broadcast
            self.glob_w.append(nn.Linear(g, c_out, bias=False))
            self.glob_b.append(nn.Linear(g, c_out, bias=False))
        if hnp:
            first, last = spec.layers[0], spec.layers[-1]
            self.first_io = ChannelLinear(c_in * s[0] * first.n_in, c_out * s[0] * first.n_in, bias=False)
            self.last_io = ChannelLinear(c_in * s[-1] * last.n_out, c_out * s[-1] * last.n_out, bias=False)
            self.last_bias_io = ChannelLinear(c_in * last.n_out, c_out * last.n_out, bias=False)

    def _map_parts(self, i: int, parts: list, shared: torch.Tensor, n: int, m: int) -> torch.Tensor:
        """w_maps[i] applied to the concatenation of `parts`, as the sum of its column blocks applied to each
        part: the parts constant along an axis are mapped at their reduced size and broadcast once, so only
        W_i itself goes through a full-size matrix product and no full-size concatenation is built."""
        blocks = self.w_maps[i].weight.split([t.shape[1] for t, _ in parts], dim=1)
        mapped: dict[str, list[torch.Tensor]] = {"nm": [], "n": [], "m": []}
        for (t, axes), block in zip(parts, blocks):  # channel-last: (B, n or 1, m or 1, C_out*s)
            mapped[axes].append(F.linear(t.movedim(1, -1), block))
        by_n = sum(mapped["n"]) + (self.w_maps[i].bias + shared.movedim(1, -1))  # (B, n, 1, C_out*s)
        # in place on the product's own output (not on a view of it, whose backward would copy the gradient)
        return mapped["nm"][0].add_(by_n).add_(sum(mapped["m"])).movedim(-1, 1)

    def _map_concatenated(self, i: int, parts: list, shared: torch.Tensor, n: int, m: int) -> torch.Tensor:
        """w_maps[i] applied to the full-size concatenation of `parts` (each broadcast to (n, m))."""
        B = parts[0][0].shape[0]
        x = torch.cat([t.expand(B, t.shape[1], n, m) for t, _ in parts], dim=1)
        return self.w_maps[i](x) + shared

    def forward(self, ws: WeightSpace, concatenated: bool = False) -> WeightSpace:
        """`concatenated=True` computes the same map the direct way (`_map_concatenated`): slower, kept as
        the reference that the tests and bench/formulations.py compare the default against."""
        L, B = self.spec.num_layers, ws.batch_size
        # each tensor's row and column means, once: every use shares one full-size reduction and its backward
        wf, rows, cols = _means(ws)
        glob = _global_means(rows, ws.biases) + (_io_invariants(rows, cols, ws.biases) if self.hnp else [])
        glob = torch.cat(glob, dim=1)
        out_w, out_b = [], []
        for i in range(L):
            n, m = wf[i].shape[2:]
            # what output weight i sees, in w_maps[i]'s input order, each with the axis it varies along:
            # "nm" both, "n" (B, ., n, 1), "m" (B, ., 1, m)
            parts = [(wf[i], "nm"), (rows[i], "n"), (cols[i], "m"), (ws.biases[i][..., None], "n")]
            b_terms = [ws.biases[i], rows[i][..., 0]]
            if i > 0:
                parts += [(ws.biases[i - 1][:, :, None, :], "m"), (rows[i - 1].movedim(3, 2), "m")]
            if i < L - 1:
                nxt = cols[i + 1][:, :, 0]  # (B, C*s_{i+1}, n_i): column means of W_{i+1}
                parts.append((nxt[..., None], "n"))
                b_terms.append(nxt)
            # invariants are shared by all kernel positions: (B, C_out) -> (B, C_out * s, 1, 1)
            shared = self.glob_w[i](glob)[:, :, None].expand(B, self.c_out, wf[i].shape[1] // self.c_in)
            shared = shared.reshape(B, -1, 1, 1)
            y = (self._map_concatenated if concatenated else self._map_parts)(i, parts, shared, n, m)
            xb = torch.cat([t.expand(B, t.shape[1], n) for t in b_terms], dim=1)
            yb = self.b_maps[i](xb) + self.glob_b[i](glob)[:, :, None]
            if self.hnp and i == 0:
                io = wf[0].movedim(3, 2).reshape(B, -1, n)  # input axis into channels
                y = y + self.first_io(io).reshape(B, -1, m, n).movedim(2, 3)
            if self.hnp and i == L - 1:
                io = wf[i].reshape(B, -1, m)  # output axis into channels
                y = y + self.last_io(io).reshape(B, -1, n, m)
                yb = yb + self.last_bias_io(ws.biases[i].reshape(B, -1, 1)).reshape(B, -1, n)
            out_w.append(unflat_kernel(y, self.spec.layers[i].kernel))
            out_b.append(yb)
        return WeightSpace(self.spec, tuple(out_w), tuple(out_b))


def np_pool(ws: WeightSpace, hnp: bool = False) -> torch.Tensor:
    """Invariant pooling: (B, features). NP averages every tensor; HNP keeps input/output axes."""
    _, rows, cols = _means(ws, cols=hnp)
    if not hnp:
        return torch.cat(_global_means(rows, ws.biases), dim=1)
    hidden = _global_means(rows[1:-1], ws.biases[:-1])  # hidden weights, then every bias but the last
    return torch.cat(_io_invariants(rows, cols, ws.biases) + hidden, dim=1)


def np_pool_width(spec: NetworkSpec, c: int, hnp: bool = False) -> int:
    if not hnp:
        return sum(c * layer.kernel_size for layer in spec.layers) + c * spec.num_layers
    first, last = spec.layers[0], spec.layers[-1]
    io = c * first.kernel_size * first.n_in + c * last.kernel_size * last.n_out + c * last.n_out
    hidden = sum(c * layer.kernel_size for layer in spec.layers[1:-1])
    return io + hidden + c * (spec.num_layers - 1)
