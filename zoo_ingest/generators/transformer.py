"""digits-transformer: small transformer classifiers reading the 8 image rows as 8 tokens of 8 pixels.

Pre-LayerNorm encoder, model width `d` = 16, 2 attention heads (head width 8), a ReLU feed-forward block of
width 32, 1 or 2 layers (sampled). Every state-dict key and shape is listed in docs/zoos.md; the attention
projections have no biases, so each layer's attention weights are exactly the W_Q, W_K, W_V, W_O of the
Transformer-NFN weight space, and the feed-forward block is its W_A, b_A, W_B, b_B.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo_ingest.generators.batched import Family, train_classifiers
from zoo_ingest.generators.classifier import OPTIMIZERS, NetworkRun, apply_dropout, snapshot, train_classifier
from zoo_ingest.generators.sampling import choice, log_uniform, network_rng, split_of_rank, torch_generator

ZOO = "digits-transformer"
D_MODEL, HEADS, D_FF, TOKENS = 16, 2, 32, 8
BATCH_SIZE = 64


class Attention(nn.Module):
    """Multi-head self-attention `(B, T, d) -> (B, T, d)`; head h uses rows h*dh:(h+1)*dh of the
    query/key/value weights and columns h*dh:(h+1)*dh of the output projection."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        if d % heads:
            raise ValueError(f"model width {d} is not divisible by {heads} heads")
        self.heads = heads
        self.queries = nn.Linear(d, d, bias=False)
        self.keys = nn.Linear(d, d, bias=False)
        self.values = nn.Linear(d, d, bias=False)
        self.out_projection = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        dh = d // self.heads

        def split_heads(y: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, H, T, dh)
            return y.view(b, t, self.heads, dh).transpose(1, 2)

        q, k, v = split_heads(self.queries(x)), split_heads(self.keys(x)), split_heads(self.values(x))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        return self.out_projection((weights @ v).transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    """x + attn(norm1(x)), then x + fc2(relu(fc1(norm2(x)))); dropout on both residual branches."""

    def __init__(self, d: int, heads: int, d_ff: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, d_ff)
        self.fc2 = nn.Linear(d_ff, d)

    def forward(self, x: torch.Tensor, dropout: float, generator) -> torch.Tensor:
        x = x + apply_dropout(self.attn(self.norm1(x)), dropout, generator)
        return x + apply_dropout(self.fc2(torch.relu(self.fc1(self.norm2(x)))), dropout, generator)


class DigitsTransformer(nn.Module):
    """Images `(B, 8, 8)` -> logits `(B, 10)`: rows are tokens, mean-pooled after the final norm."""

    def __init__(self, num_layers: int = 1, d: int = D_MODEL, heads: int = HEADS, d_ff: int = D_FF):
        super().__init__()
        self.embedding = nn.Linear(TOKENS, d)
        self.position_embedding = nn.Parameter(torch.zeros(TOKENS, d))
        self.layers = nn.ModuleList([EncoderLayer(d, heads, d_ff) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor, dropout: float = 0.0, generator=None) -> torch.Tensor:
        if x.dim() == 4:  # (B, 1, 8, 8)
            x = x.squeeze(1)
        h = self.embedding(x) + self.position_embedding
        for layer in self.layers:
            h = layer(h, dropout, generator)
        return self.classifier(self.norm(h).mean(dim=1))


def build_digits_transformer(num_layers: int = 1) -> DigitsTransformer:
    """An untrained digits transformer with 1 or 2 encoder layers; load checkpoints with `load_state_dict`."""
    return DigitsTransformer(num_layers)


def sample_hparams(rng) -> dict:
    return dict(
        num_layers=int(rng.integers(1, 3)),
        init_scale=log_uniform(rng, 0.2, 3.0),
        learning_rate=log_uniform(rng, 3e-4, 3e-2),
        l2=log_uniform(rng, 1e-8, 1e-2),
        dropout=float(rng.uniform(0.0, 0.3)),
        optimizer=choice(rng, OPTIMIZERS),
        train_fraction=float(rng.uniform(0.1, 1.0)),
        epochs=int(rng.integers(1, 21)),
    )


def init_weights(model: DigitsTransformer, scale: float, generator: torch.Generator) -> None:
    """Linear weights ~ N(0, (scale / sqrt(fan_in))^2) and zero biases; positions ~ N(0, (0.1 scale)^2);
    layer norms start as the identity (weight 1, bias 0)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == "position_embedding":
                param.normal_(0.0, 0.1 * scale, generator=generator)
            elif "norm" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("weight"):
                param.normal_(0.0, scale / param.shape[1] ** 0.5, generator=generator)
            else:
                param.zero_()


def _start(k: int, seed: int, models: dict) -> tuple[dict, torch.Generator, DigitsTransformer]:
    """Network k's hyper-parameters, its generator (after initialisation) and its initialised model;
    `models` caches one model per depth (initialisation sets every parameter)."""
    rng = network_rng(ZOO, seed, k)
    hparams = sample_hparams(rng)
    generator = torch_generator(rng)
    model = models.get(hparams["num_layers"]) or models.setdefault(
        hparams["num_layers"], DigitsTransformer(hparams["num_layers"])
    )
    init_weights(model, hparams["init_scale"], generator)
    return hparams, generator, model


def train_network(k: int, seed: int, options: dict) -> NetworkRun:
    """Network k of the zoo; its checkpoints train lazily as they are iterated."""
    hparams, generator, model = _start(k, seed, {})
    checkpoints = train_classifier(model, hparams, generator, BATCH_SIZE)
    return NetworkRun(hparams, "relu", split_of_rank(k), checkpoints)


@functools.cache
def family(num_layers: int) -> Family:
    """S stacked digits transformers of one depth: every linear map is a batched matmul over the S networks."""

    def forward(params: dict, x: torch.Tensor, factors: list | None) -> torch.Tensor:
        s, b = x.shape[:2]

        def linear(h: torch.Tensor, key: str, bias: bool = True) -> torch.Tensor:  # (S, ..., in) -> (S, ..., out)
            w = params[f"{key}.weight"].transpose(1, 2)  # (S, in, out)
            flat = h.reshape(s, -1, h.shape[-1])
            y = torch.baddbmm(params[f"{key}.bias"].unsqueeze(1), flat, w) if bias else torch.bmm(flat, w)
            return y.view(*h.shape[:-1], w.shape[-1])

        def norm(h: torch.Tensor, key: str) -> torch.Tensor:  # LayerNorm over d with per-network affine
            shape = (s,) + (1,) * (h.dim() - 2) + (h.shape[-1],)
            y = F.layer_norm(h, h.shape[-1:])
            return y * params[f"{key}.weight"].view(shape) + params[f"{key}.bias"].view(shape)

        h = linear(x, "embedding") + params["position_embedding"].unsqueeze(1)  # (S, B, T, d)
        dh = D_MODEL // HEADS
        for i in range(num_layers):
            pre = f"layers.{i}"
            a = norm(h, f"{pre}.norm1")
            q, k, v = (
                linear(a, f"{pre}.attn.{name}", bias=False).view(s, b, TOKENS, HEADS, dh).transpose(2, 3)
                for name in ("queries", "keys", "values")
            )  # (S, B, H, T, dh)
            weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
            heads = (weights @ v).transpose(2, 3).reshape(s, b, TOKENS, D_MODEL)
            branch = linear(heads, f"{pre}.attn.out_projection", bias=False)
            h = h + (branch if factors is None else branch * factors[2 * i])
            branch = linear(torch.relu(linear(norm(h, f"{pre}.norm2"), f"{pre}.fc1")), f"{pre}.fc2")
            h = h + (branch if factors is None else branch * factors[2 * i + 1])
        return linear(norm(h, "norm").mean(dim=2), "classifier")

    return Family(forward, ((TOKENS, D_MODEL),) * (2 * num_layers))


def train_block(ids: list[int], seed: int, options: dict) -> list[NetworkRun]:
    """Networks `ids` trained together, one stack per depth; hyper-parameters and initial weights are network
    k's own (as in `train_network`). Returns one NetworkRun per id, in order."""
    starts, models = [], {}
    for k in ids:
        hparams, generator, model = _start(k, seed, models)
        starts.append((k, hparams, generator, snapshot(model)))
    runs = {}
    for depth in (1, 2):
        group = [s for s in starts if s[1]["num_layers"] == depth]
        if not group:
            continue
        checkpoints = train_classifiers(
            family(depth), [s[3] for s in group], [s[1] for s in group], [s[2] for s in group], BATCH_SIZE
        )
        for (k, hparams, _, _), cps in zip(group, checkpoints):
            runs[k] = NetworkRun(hparams, "relu", split_of_rank(k), iter(cps))
    return [runs[k] for k in ids]
