"""Statistics over seeds: mean, standard deviation and a 95% Student-t interval, and paired differences.

A benchmark trains every family once per seed on the same table, so two families' results for one seed
share the training data order seed and the test networks: their difference per seed is a paired sample.
An interval that covers 0 establishes no difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
NO_DIFFERENCE = "no established difference"


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided Student-t quantile: P(|T| <= q) = level for T with `df` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def summarize(values: Sequence[float], level: float = LEVEL) -> dict:
    """{n, mean, std (ddof 1), lo, hi} of finite `values`; std and the interval are NaN below 2 values.

    The interval is mean +- t_{n-1} * std / sqrt(n)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(len(x))
    nan = float("nan")
    if n == 0:
        return {"n": 0, "mean": nan, "std": nan, "lo": nan, "hi": nan}
    mean = float(x.mean())
    if n < 2:
        return {"n": n, "mean": mean, "std": nan, "lo": nan, "hi": nan}
    std = float(x.std(ddof=1))
    half = t_quantile(n - 1, level) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half}


def paired(a: dict[int, float], b: dict[int, float], level: float = LEVEL) -> dict:
    """Differences a - b over the seeds both hold (finite values only), summarised, with wins (a > b).

    `a`, `b`: {seed: value}. Returns summarize(...) plus `wins`, `seeds` and `verdict`."""
    seeds = sorted(s for s in a.keys() & b.keys()
                   if a[s] is not None and b[s] is not None and math.isfinite(a[s]) and math.isfinite(b[s]))
    diffs = [a[s] - b[s] for s in seeds]
    out = summarize(diffs, level)
    out.update(wins=int(sum(d > 0 for d in diffs)), seeds=seeds, verdict=verdict(out))
    return out


def established(summary: dict) -> bool:
    """Whether the interval excludes 0 (an interval that could not be computed establishes nothing)."""
    lo, hi = summary["lo"], summary["hi"]
    return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)


def verdict(summary: dict) -> str:
    if not established(summary):
        return NO_DIFFERENCE
    return "higher" if summary["lo"] > 0 else "lower"


def overlap(x: dict, y: dict) -> bool:
    """Whether two intervals overlap (or either is missing): such families are not ranked."""
    if not all(math.isfinite(v) for v in (x["lo"], x["hi"], y["lo"], y["hi"])):
        return True
    return x["lo"] <= y["hi"] and y["lo"] <= x["hi"]
