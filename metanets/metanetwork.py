"""`Metanetwork`: the one type every builder returns (chains and transformer encoders alike).

It imports nothing of the builders, so `metanets.models`, `metanets.transformer.models` and the registry
(`metanets.registry`) all import it and none of them import each other.
"""

from __future__ import annotations

import torch
from torch import nn

from metanets.spec import SpecError


class Metanetwork(nn.Module):
    """body (equivariant layers) -> optional quasi layer -> invariant pooling -> MLP head.

    Maps a one-channel weight space (B, 1, ...) to (B, out_dim) and states the group its output is
    invariant to (`invariant_to`) and whether that invariance is exact (`invariance_exact`).
    `quasi(feature, theta)`, when set, maps the body's feature (and the input network) to the pooled feature.
    """

    def __init__(self, name, spec, body, pool, head, invariant_to, exact, quasi=None):
        super().__init__()
        self.name, self.spec = name, spec
        self.body, self.pool, self.head, self.quasi = body, pool, head, quasi
        self.invariant_to, self.invariance_exact = invariant_to, exact

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_input(self, ws):
        if ws.spec != self.spec:
            raise SpecError(
                f"{self.name} was built for architecture {self.spec.arch_id} "
                f"({self.spec.activation}, {self.spec.num_params} parameters); got {ws.spec.arch_id} "
                f"({ws.spec.activation}, {ws.spec.num_params} parameters)"
            )
        return ws.validate(channels=1).check_finite()

    def features(self, ws):
        """The equivariant (or quasi-equivariant) feature before pooling."""
        feat = self.body(ws)
        return self.quasi(feat, ws) if self.quasi is not None else feat

    def pooled(self, ws):
        """`pool(features(ws))`. A quasi layer whose output is `scale_hidden(feature, scales)`
        (`unscaled_and_scales`) hands both to a pool that takes scales (`accepts_scales`), which folds the
        scaling into its normalisation: the same function, without the full-size scaled feature."""
        feat = self.body(ws)
        if self.quasi is None:
            return self.pool(feat)
        split = getattr(self.quasi, "unscaled_and_scales", None)
        if split is not None and getattr(self.pool, "accepts_scales", False):
            feature, scales = split(feat, ws)
            return self.pool(feature, scales=scales)
        return self.pool(self.quasi(feat, ws))

    def forward(self, ws) -> torch.Tensor:
        ws = self.check_input(ws)
        return self.head(self.pooled(ws))
