"""The built-in zoos: what each trains, the options it takes, and how its spread is summarised.

Each zoo module exposes `train_network(k, seed, options) -> NetworkRun`, a pure function of its arguments:
network k's weights depend on (zoo, seed, k, options) only. A zoo with a batched path also exposes
`train_block(ids, seed, options) -> [NetworkRun, ...]` (one per id, same order), which trains the networks
`ids` together (grouped by architecture and activation inside the zoo module). Each network keeps the
hyper-parameters and initial weights `train_network` gives it; its trained weights may differ from the
per-network path by float rounding, and depend on which networks share its block, so blocks are fixed by
network id (see zoo_ingest/generate.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from zoo_ingest.generators import cnn, siren, transformer
from zoo_ingest.generators.classifier import NetworkRun
from zoo_ingest.generators.cnn import build_digits_cnn
from zoo_ingest.generators.siren import build_siren
from zoo_ingest.generators.transformer import build_digits_transformer


@dataclass(frozen=True)
class ZooDefinition:
    name: str
    description: str
    train_network: Callable[[int, int, dict], NetworkRun]
    metric: str  # the final-checkpoint metric whose spread the generator prints
    options: dict = field(default_factory=dict)  # accepted options and their defaults
    # accepted options recorded in the manifest only when given, so zoos made before they existed still resume
    optional: frozenset = frozenset()
    version: int = 1  # bump whenever the same (seed, k) would give different weights
    max_networks: Callable[[dict], int] | None = None
    check_options: Callable[[dict], None] | None = None  # raises GenerateError naming a bad option
    train_block: Callable[[list[int], int, dict], list[NetworkRun]] | None = None  # the batched path
    block_version: int = 1  # bump whenever train_block would give different weights for the same block
    block_bytes: int = 4 << 20  # estimated memory of one network while a block trains (splits big blocks)


ZOOS: dict[str, ZooDefinition] = {
    "digits-cnn": ZooDefinition(
        "digits-cnn",
        "Small-CNN-Zoo CNNs (4,970 parameters) classifying digits",
        cnn.train_network,
        "test_accuracy",
        optional=frozenset({"activation"}),
        check_options=cnn.check_options,
        train_block=cnn.train_block,
        block_bytes=2 << 20,
    ),
    "digits-siren": ZooDefinition(
        "digits-siren",
        "SIRENs 2-32-32-1 each fitted to one digits image",
        siren.train_network,
        "psnr",
        options=dict(siren.OPTIONS),
        version=2,  # 2: the shared-init recipe became the default, fitted in blocks
        max_networks=siren.max_networks,
        train_block=siren.train_block,
    ),
    "digits-transformer": ZooDefinition(
        "digits-transformer",
        "1-2 layer transformers classifying digits rows as tokens",
        transformer.train_network,
        "test_accuracy",
        train_block=transformer.train_block,
        block_bytes=4 << 20,
    ),
}

__all__ = ["ZOOS", "ZooDefinition", "build_digits_cnn", "build_digits_transformer", "build_siren"]
