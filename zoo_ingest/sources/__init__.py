"""Zoo sources, one per `--format`: each lists its inputs on the driver and reads them in Ray tasks."""

from __future__ import annotations

from zoo_ingest.sources.base import Plan, Reject, Source, SourceError, WeightBatch
from zoo_ingest.sources.files import Checkpoints, NFNSiren
from zoo_ingest.sources.smallcnnzoo import SmallCNNZoo
from zoo_ingest.storage import Location

SOURCES: dict[str, type[Source]] = {
    SmallCNNZoo.format: SmallCNNZoo,
    NFNSiren.format: NFNSiren,
    Checkpoints.format: Checkpoints,
}
FORMATS = tuple(SOURCES)


def make_source(format: str, location: Location, **options) -> Source:
    if format not in SOURCES:
        raise ValueError(f"unknown zoo format {format!r}; choose from {', '.join(FORMATS)}")
    return SOURCES[format](location, **options)


__all__ = ["FORMATS", "SOURCES", "Plan", "Reject", "Source", "SourceError", "WeightBatch", "make_source"]
