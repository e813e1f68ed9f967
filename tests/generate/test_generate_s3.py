"""A zoo generated straight onto an object store (moto S3), by Ray tasks, and resumed there."""

from __future__ import annotations

import csv
import io

import pytest

from zoo_ingest.generate import generate

pytestmark = pytest.mark.ray


@pytest.fixture
def s3(request):
    try:
        return request.getfixturevalue("s3_server")
    except pytest.FixtureLookupError:
        pytest.skip("no s3_server fixture in tests/conftest.py")


def test_generate_and_resume_on_s3(ray_local, s3):
    import s3fs

    options = s3["options"]
    url = f"s3://{s3['bucket']}/zoos/digits-siren"
    first = generate("digits-siren", url, 6, seed=1, workers=2, networks_per_task=2, storage_options=options,
                     progress=False, summary=False)
    assert first.trained == tuple(range(6))
    fs = s3fs.S3FileSystem(key=options["key"], secret=options["secret"],
                           client_kwargs={"endpoint_url": options["endpoint_url"], "region_name": options["region"]})
    root = f"{s3['bucket']}/zoos/digits-siren"
    rows = list(csv.DictReader(io.StringIO(fs.cat_file(f"{root}/metadata.csv").decode())))
    assert [r["file"] for r in rows] == [f"net-{k:06d}_step-00100.safetensors" for k in range(6)]
    assert all(fs.exists(f"{root}/{r['file']}") for r in rows)
    before = {r["file"]: fs.cat_file(f"{root}/{r['file']}") for r in rows}

    fs.rm(f"{root}/_parts/net-000004.json")
    fs.rm(f"{root}/net-000001_step-00100.safetensors")
    fs.pipe_file(f"{root}/metadata.csv", b"file,network_id\nnet-000000_step-00100.saf")
    second = generate("digits-siren", url, 6, seed=1, workers=2, storage_options=options, progress=False,
                      summary=False)
    assert second.trained == (1, 4)
    assert {f: fs.cat_file(f"{root}/{f}") for f in before} == before
    assert len(list(csv.DictReader(io.StringIO(fs.cat_file(f"{root}/metadata.csv").decode())))) == 6
