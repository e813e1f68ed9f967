"""S3 for real: a moto server on 127.0.0.1, endpoint and credentials passed explicitly (as for MinIO)."""

from __future__ import annotations

import json

import pytest

from zoo_ingest import ingest, open_table, to_weight_space
from zoo_ingest.storage import Location

pytestmark = pytest.mark.ray


def test_ingest_to_s3_and_read_back_with_open_table_and_ray_data(
    tmp_path, zoo_writers, s3_server, clean_env, ray_local
):
    opts, bucket = s3_server["options"], s3_server["bucket"]
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=24, inf_rows=(3,))
    uri = f"s3://{bucket}/tables/cnn"
    summary = ingest(str(tmp_path / "zoo"), uri, "smallcnnzoo", storage_options=opts, progress=False)
    assert (summary.rows, summary.rejected) == (23, 1)
    store = Location(uri, opts)
    assert store.exists("_zoo.json") and store.glob("arch=*/split=train/*.parquet")
    assert not store.glob("_probe-*")  # the writability probe cleaned up after itself
    table = open_table(uri, storage_options=opts)
    assert sum(ws.batch_size for ws, _ in table.batches(5)) == 23
    assert table.rejects()["reason"].to_pylist() == ["non_finite"]
    arch = sorted(table.archs)[0]
    dataset = table.to_ray_dataset(arch=arch)
    assert dataset.count() == table.num_rows(arch=arch)
    batch = next(iter(dataset.iter_batches(batch_size=4, batch_format="numpy")))
    ws = to_weight_space(batch, table.archs[arch])
    assert ws.batch_size == 4 and ws.weights[1].shape[1:] == (1, 4, 4, 3, 2)
    again = ingest(str(tmp_path / "zoo"), uri, "smallcnnzoo", storage_options=opts, progress=False)
    assert again.already_complete


def test_s3_source_gives_the_same_rows_as_local(tmp_path, zoo_writers, s3_server, clean_env, ray_local):
    opts, bucket = s3_server["options"], s3_server["bucket"]
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=12)
    store = Location(f"s3://{bucket}/zoos/cnn", opts)
    for name in ("weights.npy", "metrics.csv.gz", "layout.csv"):
        store.write_bytes(name, (tmp_path / "zoo" / name).read_bytes())
    ingest(store.url, f"s3://{bucket}/tables/from-s3", "smallcnnzoo", storage_options=opts, progress=False)
    ingest(str(tmp_path / "zoo"), str(tmp_path / "local"), "smallcnnzoo", progress=False)
    remote = open_table(f"s3://{bucket}/tables/from-s3", storage_options=opts)
    local = open_table(str(tmp_path / "local"))
    ids = lambda t: sorted(i for _, tg in t.batches(50) for i in tg["model_id"])  # noqa: E731
    assert ids(remote) == ids(local) and len(ids(local)) == 12


def test_environment_variables_configure_s3_like_other_tools(tmp_path, zoo_writers, s3_server, clean_env, ray_local):
    """Only the standard variables, set in the driver after Ray started: its workers never saw them,
    so this passes only if the driver hands the settings to the tasks (and pyarrow gets the endpoint)."""
    opts, bucket = s3_server["options"], s3_server["bucket"]
    zoo_writers.nfn_siren(tmp_path / "siren", per_label=2)
    clean_env.setenv("AWS_ENDPOINT_URL_S3", opts["endpoint_url"])
    clean_env.setenv("AWS_REGION", opts["region"])
    clean_env.setenv("AWS_ACCESS_KEY_ID", opts["key"])
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", opts["secret"])
    uri = f"s3://{bucket}/tables/siren"
    summary = ingest(str(tmp_path / "siren"), uri, "nfn-siren", progress=False)
    assert summary.rows == 6
    table = open_table(uri)  # no storage_options: s3fs and pyarrow both configured from the variables
    assert sum(ws.batch_size for ws, _ in table.batches(4)) == 6
    assert opts["secret"] not in json.dumps(table.card)  # credentials never land in the table


def test_failed_upload_publishes_nothing(s3_server, clean_env):
    store = Location(f"s3://{s3_server['bucket']}/atomic", s3_server["options"])
    with pytest.raises(RuntimeError):
        with store.spool("part.parquet") as local:
            with open(local, "wb") as f:
                f.write(b"half a file")
            raise RuntimeError("worker died")
    assert not store.exists("part.parquet")
