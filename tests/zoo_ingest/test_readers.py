"""Generic Arrow readers read a freshly ingested table pointed at its folder, locally and on S3 (moto):
pyarrow.dataset, pandas.read_parquet, polars.scan_parquet and duckdb's read_parquet. Each must see
every row and give back tensors that reshape to the zoo card's shapes, equal to the networks written."""

from __future__ import annotations

import numpy as np
import pytest

from zoo_ingest import ingest, open_table

KEY = "conv2.weight"  # (4, 4, 3, 2): an asymmetric kernel, so a wrong axis order cannot pass


def read_pyarrow(folder, where):
    import pyarrow.dataset as ds

    table = ds.dataset(folder, format="parquet", partitioning="hive", filesystem=where.get("arrow_fs")).to_table()
    return table["source"].to_pylist(), table[KEY].combine_chunks().storage.flatten().to_numpy(), table["split"]


def read_pandas(folder, where):
    import pandas as pd

    frame = pd.read_parquet(where.get("fsspec_url", folder), storage_options=where.get("fsspec_options"))
    return frame["source"].tolist(), np.stack(frame[KEY].to_numpy()), frame["split"]


def read_polars(folder, where):
    import polars as pl

    url = where.get("fsspec_url", folder) + "/"  # polars lists a folder given with its trailing slash
    frame = pl.scan_parquet(url, hidden_file_prefix="_", storage_options=where.get("polars_options")).collect()
    return frame["source"].to_list(), frame[KEY].to_numpy(), frame["split"]


def read_duckdb(folder, where):
    import duckdb

    con = duckdb.connect()
    if "fsspec_options" in where:
        # duckdb's own S3 support is the httpfs extension, which it downloads on first use: impossible
        # offline. duckdb also reads through any fsspec filesystem registered with it, so read_parquet
        # runs over s3fs instead.
        import s3fs

        con.register_filesystem(s3fs.S3FileSystem(**where["fsspec_options"]))
    url = where.get("fsspec_url", folder)
    # a bare folder would also match _rejects/*.parquet: the Hive glob names the shards, not a file list
    shards = f"read_parquet('{url}/arch=*/split=*/*.parquet', hive_partitioning=true)"
    got = con.sql(f'SELECT source, "{KEY}" AS w, split FROM {shards}').fetchnumpy()
    return list(got["source"]), np.stack(got["w"]), got["split"]


READERS = {"pyarrow": read_pyarrow, "pandas": read_pandas, "polars": read_polars, "duckdb": read_duckdb}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from tests.zoo_ingest.conftest import write_smallcnnzoo

    root = tmp_path_factory.mktemp("readers")
    info = write_smallcnnzoo(root / "zoo", n=30, inf_rows=(4,))  # one reject: _rejects/ must stay out of reads
    return root, info


@pytest.fixture(scope="module")
def local_table(zoo):
    root, info = zoo
    ingest(str(root / "zoo"), str(root / "table"), "smallcnnzoo", use_ray=False, progress=False)
    return str(root / "table"), {}, info


@pytest.fixture(scope="module")
def s3_table(zoo, s3_server):
    import pyarrow.fs as pafs

    root, info = zoo
    opts, bucket = s3_server["options"], s3_server["bucket"]
    ingest(
        str(root / "zoo"), f"s3://{bucket}/readers", "smallcnnzoo", use_ray=False, progress=False, storage_options=opts
    )
    endpoint = opts["endpoint_url"]
    where = {  # each tool's own way of naming an S3-compatible endpoint, as its users write it
        "arrow_fs": pafs.S3FileSystem(
            endpoint_override=endpoint,
            access_key=opts["key"],
            secret_key=opts["secret"],
            region=opts["region"],
            scheme="http",
        ),
        "fsspec_url": f"s3://{bucket}/readers",
        "fsspec_options": {
            "key": opts["key"],
            "secret": opts["secret"],
            "client_kwargs": {"endpoint_url": endpoint, "region_name": opts["region"]},
        },
        "polars_options": {
            "aws_endpoint_url": endpoint,
            "aws_access_key_id": opts["key"],
            "aws_secret_access_key": opts["secret"],
            "aws_region": opts["region"],
            "aws_allow_http": "true",
        },
        "card_options": opts,
    }
    return f"{bucket}/readers", where, info


def _check(reader, folder, where, info, uri):
    table = open_table(uri, where.get("card_options"))
    (shape,) = {tuple(p["shape"]) for a in table.card["architectures"] for p in a["params"] if p["key"] == KEY}
    sources, flat, splits = READERS[reader](folder, where)
    assert len(sources) == table.card["rows"] == 29  # every row, no reject, no card, no marker
    assert set(np.asarray(splits).tolist()) == {"train", "val", "test"}  # the Hive partition column
    tensors = np.asarray(flat, dtype=np.float32).reshape(len(sources), *shape)
    for i in (0, len(sources) - 1):
        row = int(sources[i].removeprefix("weights.npy[").removesuffix("]"))
        np.testing.assert_array_equal(tensors[i], info["state_dicts"][row][KEY].numpy())


@pytest.mark.parametrize("reader", READERS)
def test_reader_reads_the_local_table_folder(reader, local_table):
    folder, where, info = local_table
    _check(reader, folder, where, info, folder)


@pytest.mark.parametrize("reader", READERS)
def test_reader_reads_the_table_folder_on_s3(reader, s3_table):
    folder, where, info = s3_table
    _check(reader, folder, where, info, where["fsspec_url"])
