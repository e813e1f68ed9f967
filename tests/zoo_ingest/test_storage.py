"""Storage: S3 settings from the environment with explicit overrides, atomic writes, fail-fast probes."""

from __future__ import annotations

import os
import pickle
import time

import pytest

from zoo_ingest.storage import Location, StorageError, arrow_s3, s3_settings


def test_s3_settings_read_the_standard_variables(clean_env):
    clean_env.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:2")
    clean_env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AK")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    s = s3_settings()
    assert (s["endpoint_url"], s["region"], s["key"], s["secret"]) == ("http://s3-specific:2", "eu-west-1", "AK", "SK")
    clean_env.setenv("AWS_REGION", "us-west-2")
    assert s3_settings()["region"] == "us-west-2"  # AWS_REGION wins over AWS_DEFAULT_REGION


def test_explicit_options_override_the_environment(clean_env):
    clean_env.setenv("AWS_ENDPOINT_URL", "http://env:1")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "env-key")
    s = s3_settings({"endpoint_url": "http://explicit:9000", "key": "k2", "region": None})
    assert s["endpoint_url"] == "http://explicit:9000" and s["key"] == "k2"


def test_both_s3_clients_get_the_same_endpoint_and_credentials(clean_env):
    opts = {"endpoint_url": "http://127.0.0.1:9000", "region": "eu-central-1", "key": "AK", "secret": "SK"}
    loc = Location("s3://bucket/table", opts)
    kwargs = loc.fs_kwargs()
    assert kwargs["endpoint_url"] == "http://127.0.0.1:9000" and kwargs["key"] == "AK" and kwargs["secret"] == "SK"
    assert kwargs["client_kwargs"]["region_name"] == "eu-central-1"
    afs = arrow_s3(opts)
    assert afs.region == "eu-central-1"
    assert "127.0.0.1:9000" in str(afs.__reduce__())  # endpoint_override and scheme travel with it


def test_repr_and_logs_never_show_secrets():
    loc = Location("s3://b/t", {"key": "AKIDSECRET", "secret": "very-secret", "endpoint_url": "http://x"})
    assert "very-secret" not in repr(loc) and "AKIDSECRET" not in repr(loc)
    assert "http://x" in repr(loc)
    clone = pickle.loads(pickle.dumps(loc))  # sent to Ray tasks
    assert clone.options["secret"] == "very-secret" and clone.url == loc.url


def test_spool_publishes_atomically_and_drops_failed_writes(tmp_path):
    loc = Location(str(tmp_path / "table"))
    with loc.spool("a/part.bin") as local:
        with open(local, "wb") as f:
            f.write(b"x" * 10)
        assert not (tmp_path / "table/a/part.bin").exists()  # not visible before the end
        assert os.path.basename(local).startswith(".")  # hidden from Arrow readers meanwhile
    assert (tmp_path / "table/a/part.bin").read_bytes() == b"x" * 10
    with pytest.raises(RuntimeError):
        with loc.spool("a/part.bin") as local:
            with open(local, "wb") as f:
                f.write(b"half")
            raise RuntimeError("crash mid-write")
    assert (tmp_path / "table/a/part.bin").read_bytes() == b"x" * 10  # the old file is intact
    assert sorted(p.name for p in (tmp_path / "table/a").iterdir()) == ["part.bin"]  # no temp left


def test_memory_filesystem_writes_through_put(tmp_path):
    loc = Location("memory://metazoo-test/t")
    loc.write_bytes("_zoo.json", b"{}")
    assert loc.read_bytes("_zoo.json") == b"{}"
    assert loc.glob("*.json") == ["_zoo.json"]


def test_unwritable_destination_fails_fast_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="not writable|unreachable") as err:
        Location(str(blocker / "table")).check_writable()
    assert str(blocker / "table") in str(err.value)


def test_unreachable_s3_endpoint_fails_within_seconds(clean_env):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    loc = Location("s3://bucket/table", {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"})
    start = time.perf_counter()
    with pytest.raises(StorageError, match="unreachable") as err:
        loc.check_writable()
    assert time.perf_counter() - start < 30
    assert "s3://bucket/table" in str(err.value) and "s\n" not in str(err.value)
