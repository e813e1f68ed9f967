"""zoo_ingest: model zoos in, weight tables out.

    from zoo_ingest import ingest, open_table
    ingest("path/to/small-cnn-zoo/mnist", "s3://zoos/mnist", format="smallcnnzoo")
    table = open_table("s3://zoos/mnist")

Sources (`FORMATS`): `smallcnnzoo`, `nfn-siren`, `checkpoints`. The table format is described in
docs/weight_tables.md. Heavy dependencies (ray) are imported only where they are used.
"""

from zoo_ingest.finalize import IngestError, IngestSummary
from zoo_ingest.ingest import ingest
from zoo_ingest.schema import DEFAULT_TENSOR_TYPE, SCHEMA_VERSION, TENSOR_TYPES
from zoo_ingest.sources import FORMATS, SourceError
from zoo_ingest.splits import SPLITS
from zoo_ingest.storage import StorageError
from zoo_ingest.table import TableError, WeightTable, open_table, to_weight_space

CHECKPOINTS, NFN_SIREN, SMALLCNNZOO = "checkpoints", "nfn-siren", "smallcnnzoo"

__all__ = [
    "CHECKPOINTS",
    "DEFAULT_TENSOR_TYPE",
    "FORMATS",
    "NFN_SIREN",
    "SCHEMA_VERSION",
    "SMALLCNNZOO",
    "SPLITS",
    "TENSOR_TYPES",
    "IngestError",
    "IngestSummary",
    "SourceError",
    "StorageError",
    "TableError",
    "WeightTable",
    "ingest",
    "open_table",
    "to_weight_space",
]
