"""Wrong (uncoupled) variants of the transformer group action, for tests that must fail under them.

Each takes a `TransformerElement` g and returns a function ws -> ws that acts like `symmetry.act(g, .)`
except for one piece.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from metanets import symmetry
from metanets.transformer.symmetry import permute


def _permuted(g, ws):
    return permute(ws, g.head_perm.to(ws.device), g.ffn_perm.to(ws.device))


def keys_with_a(g):
    """W_K -> W_K A (instead of A^{-T}): the attention scores change."""
    def action(ws):
        p, qk = _permuted(g, ws), g.qk.to(ws.dtype).unsqueeze(1)
        return symmetry.act(g, ws).replace(wk=p.wk @ qk, bk=(p.bk.unsqueeze(-2) @ qk).squeeze(-2))
    return action


def out_with_b(g):
    """W_O -> B W_O (instead of B^{-1} W_O)."""
    def action(ws):
        return symmetry.act(g, ws).replace(wo=g.vo.to(ws.dtype).unsqueeze(1) @ _permuted(g, ws).wo)
    return action


def queries_only_heads(g):
    """Heads of W_Q permuted (rolled by one) but W_K's heads left in place."""
    rolled = replace(g, head_perm=torch.roll(torch.arange(g.head_perm.shape[-1]), 1).expand_as(g.head_perm).clone())

    def action(ws):
        moved = symmetry.act(rolled, ws)
        fixed = symmetry.act(replace(rolled, head_perm=symmetry.identity(ws.spec, ws.batch_size).head_perm), ws)
        return moved.replace(wk=fixed.wk, bk=fixed.bk)
    return action


def ffn_out_times_s(g):
    """W_B rows multiplied by s (instead of divided)."""
    def action(ws):
        s = g.ffn_scale.to(ws.dtype).unsqueeze(1).unsqueeze(-1)
        return symmetry.act(g, ws).replace(wb=_permuted(g, ws).wb * s)
    return action


WRONG_ACTIONS = {
    "keys_with_A": keys_with_a,
    "out_with_B": out_with_b,
    "queries_only_heads": queries_only_heads,
    "ffn_out_times_s": ffn_out_times_s,
}
