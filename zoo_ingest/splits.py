"""Train/val/test splits: by content hash (default), from a published split file, or none.

Hash split: a row goes to train, val or test by sha256("<seed>:<key>") mapped to [0, 1) against the
cumulative fractions. The key names the *network*, so that all checkpoints of one training run land in
the same split and a metanetwork is never tested on a network it trained on: by default the source's
own identifying column (`Source.network_key`: the Small CNN Zoo's `modeldir`, the image index of an
NFN SIREN, the `network_id` of `metazoo generate`), else the hparams value given as `split_by`. A source
that cannot name its networks is an error asking for `split_by`; `split_by="model_id"` (each
checkpoint its own network) is an explicit choice, never a silent default. Copies of one network share
a model_id and therefore a split: duplicates never leak between train and test either way.

Split files (`split_file`), three forms:
  * CSV with a header holding `split` and one key column: `source` (or `file` / `ckpt_file`, so the
    metadata.csv of `metazoo generate` is itself a split file), `index` or `model_id`;
  * a header-less list of integer indices (a published shuffle order, such as NFN's Small CNN Zoo
    splits): rows are ranked by their position in the list among the rows of the same step, and the
    fractions apply in that order, so `--split 40/10/50` holds out the last half as test;
  * JSON `{"index_ranges": {"train": [0, 45000], "val": [45000, 50000], "test": [50000, null]}}`
    (half-open ranges of `index`, as NFN's SIREN splits).
A row that a split file does not place is rejected (`not_in_split_file`), so counts still add up.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import defaultdict
from dataclasses import dataclass, replace

from zoo_ingest.sources.base import SourceError, hparam_name

SPLITS = ("train", "val", "test")
ALL = "all"  # the single partition of `--split none`
PER_CHECKPOINT = "model_id"  # split_by value: every checkpoint is its own network (hash of its model_id)
INDEX = "index"  # split_by value: the input's index (nfn-siren: the image the SIREN was fitted to)


@dataclass(frozen=True)
class SplitPolicy:
    mode: str = "hash"  # hash | none | file
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    by: str | None = None
    file: str | None = None
    network: str | None = None  # what `by` names, in words (from the source), for the card

    @classmethod
    def parse(cls, split: str | None = "80/10/10", *, split_file=None, seed=0, by=None) -> SplitPolicy:
        """`split` is "none" or fractions "80/10/10" / "0.8,0.1,0.1" (train/val/test)."""
        text = (split or "80/10/10").strip().lower()
        if text == "none":
            if split_file:
                raise ValueError("--split none and --split-file exclude each other")
            return cls(mode="none", seed=seed)
        try:
            parts = [float(p) for p in text.replace(",", "/").split("/")]
        except ValueError:
            parts = []
        if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
            raise ValueError(f"split {split!r}: give three non-negative fractions train/val/test, or 'none'")
        total = sum(parts)
        fractions = tuple(p / total for p in parts)
        if abs(total - 100) > 1e-6 and abs(total - 1) > 1e-6:
            raise ValueError(f"split {split!r}: fractions must add up to 100 (or 1), they add up to {total}")
        return cls(mode="file" if split_file else "hash", fractions=fractions, seed=seed, by=by, file=split_file)

    def describe(self) -> str:
        """The split rule in words (recorded in the zoo card)."""
        if self.mode == "none":
            return f"no split: every row in {ALL!r}"
        if self.mode == "file":
            return f"from the split file {self.file}"
        if self.by == PER_CHECKPOINT:
            return "per checkpoint: hash of model_id (asked for with split_by='model_id')"
        what = f" ({self.network})" if self.network else ""
        key = "the input index" if self.by == INDEX else f"hparams[{self.by!r}]"
        return f"per network: hash of {key}{what}; all checkpoints of a network share a split"

    @property
    def names(self) -> tuple[str, ...]:
        return (ALL,) if self.mode == "none" else SPLITS

    def by_fraction(self, u: float) -> str:
        train, val, _ = self.fractions
        return "train" if u < train else "val" if u < train + val else "test"

    def by_hash(self, key: str) -> str:
        if self.mode == "none":
            return ALL
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        return self.by_fraction(int.from_bytes(digest[:8], "big") / 2**64)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "fractions": list(self.fractions),
            "seed": self.seed,
            "by": self.by,
            "file": self.file,
            "rule": self.describe(),
        }


@dataclass(frozen=True)
class SplitAssignment:
    """Per input row: a split, None (decide from model_id in the task) or "" (not in the split file)."""

    rows: list[str | None]
    by_model_id: dict[str, str] | None = None  # model_id-keyed split files


def assign(policy: SplitPolicy, sources, indices, steps, hparams, split_file_text: str | None):
    """Splits known before the weights are read (see `SplitAssignment`)."""
    n = len(sources)
    if policy.mode == "none":
        return SplitAssignment([ALL] * n)
    if policy.mode == "hash":
        if policy.by is None or policy.by == PER_CHECKPOINT:
            return SplitAssignment([None] * n)
        name, values = network_values(policy.by, sources, indices, hparams)
        return SplitAssignment([policy.by_hash(f"{name}={v}") for v in values])
    return _from_file(policy, split_file_text or "", sources, indices, steps)


def network_values(by: str, sources, indices, hparams) -> tuple[str, list]:
    """(key, each row's value of the network key `by`): INDEX or an hparams key (`config.`/`hparam.`
    prefix optional). A row without a value is an error naming it, never a silent per-checkpoint split."""
    name = by
    if by == INDEX:
        values = list(indices)
        missing = "has no index (its file name does not match --index-pattern)"
    else:
        parsed = [json.loads(h) if h else {} for h in hparams]
        keys = sorted({k for p in parsed for k in p})
        name = by if by in keys or hparam_name(by) not in keys else hparam_name(by)
        if parsed and name not in keys:
            raise SourceError(
                f"--split-by {by!r}: no checkpoint has this hyper-parameter (hyper-parameters: {keys}); "
                f"name a column that identifies each network, or --split-by {PER_CHECKPOINT} to split per checkpoint"
            )
        values = [p.get(name) for p in parsed]
        missing = f"has no value for --split-by {by!r}"
    for row, value in enumerate(values):
        if value is None:
            raise SourceError(f"{sources[row]} {missing}, so its network cannot be kept in one split")
    return name, values


def resolve_network(policy: SplitPolicy, key: str | None, what: str) -> SplitPolicy:
    """A hash split without `by` takes the source's network key (`what` says what it names, or why
    there is none); a source without one is an error."""
    if policy.mode != "hash" or policy.by is not None:
        return policy
    if key is None:
        raise SourceError(
            f"{what}; a split per checkpoint would put checkpoints of one network in train and test. "
            f"Pass --split-by HPARAM (a column naming each network's training run), --split-file, "
            f"or --split-by {PER_CHECKPOINT} if every checkpoint is a network of its own"
        )
    return replace(policy, by=key, network=what)


def _from_file(policy, text, sources, indices, steps) -> SplitAssignment:
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"split file {policy.file} is empty")
    if stripped.startswith("{"):
        ranges = json.loads(stripped).get("index_ranges")
        if not isinstance(ranges, dict) or not set(ranges) <= set(SPLITS):
            raise ValueError(f"split file {policy.file}: expected {{'index_ranges': {{'train': [lo, hi], ...}}}}")
        out = []
        for idx in indices:
            hit = ""
            for name, (lo, hi) in ranges.items():
                if idx is not None and idx >= (lo or 0) and (hi is None or idx < hi):
                    hit = name
            out.append(hit)
        return SplitAssignment(out)
    first = stripped.splitlines()[0].strip()
    if first.lstrip("-").isdigit():
        return _from_order(policy, stripped, indices, steps)
    reader = csv.DictReader(io.StringIO(stripped))
    fields = reader.fieldnames or []
    key = next((k for k in ("source", "file", "ckpt_file", "index", "model_id") if k in fields), None)
    if "split" not in fields or key is None:
        raise ValueError(
            f"split file {policy.file}: needs a 'split' column and one of 'source', 'file', 'index', 'model_id'; "
            f"it has {fields}"
        )
    table = {}
    for line, row in enumerate(reader, start=2):
        if row["split"] not in SPLITS:
            raise ValueError(f"split file {policy.file}, line {line}: unknown split {row['split']!r}")
        table[row[key]] = row["split"]
    if key == "model_id":
        return SplitAssignment([None] * len(sources), by_model_id=table)
    keys = [None if i is None else str(i) for i in indices] if key == "index" else sources
    return SplitAssignment([table.get(k, "") if k is not None else "" for k in keys])


def _from_order(policy, text, indices, steps) -> SplitAssignment:
    position = {}
    for line, word in enumerate(text.split(), start=1):
        try:
            position.setdefault(int(word), len(position))
        except ValueError:
            raise ValueError(f"split file {policy.file}, line {line}: {word!r} is not an integer index") from None
    groups = defaultdict(list)
    for row, (idx, step) in enumerate(zip(indices, steps)):
        if idx is not None and idx in position:
            groups[step].append((position[idx], row))
    out: list[str | None] = [""] * len(indices)
    train, val, _ = policy.fractions
    for members in groups.values():
        members.sort()
        n = len(members)
        # The same cut points as `int(fraction * n)` in the published loaders.
        train_end, val_end = int(train * n + 1e-9), int((train + val) * n + 1e-9)
        for rank, (_, row) in enumerate(members):
            out[row] = "train" if rank < train_end else "val" if rank < val_end else "test"
    return SplitAssignment(out)
