"""`metazoo ingest`: the console command, and destinations that cannot be written."""

from __future__ import annotations

import functools
import http.server
import os
import threading

import pytest

from cluster.cli import main
from zoo_ingest import open_table


@pytest.mark.ray
def test_metazoo_ingest_writes_a_table_and_prints_a_summary(tmp_path, zoo_writers, capsys, ray_local):
    zoo_writers.nfn_siren(tmp_path / "siren", per_label=2)
    out = tmp_path / "table"
    code = main(
        [
            "ingest",
            str(tmp_path / "siren"),
            "--format",
            "nfn-siren",
            "--out",
            str(out),
            "--zoo",
            "mnist-inrs",
            "--split",
            "50/25/25",
            "--no-progress",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "inputs 6 = rows 6 + rejects 0" in printed and "ckpt/s" in printed
    # the console: Ray's own output goes to the printed log file, not to the person
    assert "logs of Ray, DeepSpeed and MLflow:" in printed + captured.err
    assert "WARNING" not in printed + captured.err
    table = open_table(str(out))
    assert table.zoo == "mnist-inrs" and table.card["settings"]["split"]["fractions"] == [0.5, 0.25, 0.25]


def test_unwritable_destination_fails_fast_with_a_message(tmp_path, zoo_writers, capsys):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=3)
    (tmp_path / "file").write_text("x")
    code = main(["ingest", str(tmp_path / "zoo"), "--format", "smallcnnzoo", "--out", str(tmp_path / "file/t")])
    assert code == 2
    err = capsys.readouterr().err
    assert "metazoo ingest: destination" in err and "not writable" in err and "Traceback" not in err


def test_broken_source_fails_with_a_message_naming_the_file(tmp_path, zoo_writers, capsys):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=3)
    (tmp_path / "zoo/metrics.csv.gz").unlink()
    code = main(["ingest", str(tmp_path / "zoo"), "--format", "smallcnnzoo", "--out", str(tmp_path / "t")])
    assert code == 2 and "metrics.csv: file not found" in capsys.readouterr().err
    assert not (tmp_path / "t/_zoo.json").exists()


def test_a_zoo_that_names_no_networks_asks_for_split_by(tmp_path, zoo_writers, capsys):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=6, modeldir=False)
    args = ["ingest", str(tmp_path / "zoo"), "--format", "smallcnnzoo", "--out", str(tmp_path / "t"), "--no-ray"]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no 'modeldir' column" in err and "--split-by HPARAM" in err and "Traceback" not in err
    assert main([*args, "--no-progress", "--split-by", "model_id", "--compact-mb", "0"]) == 0
    card = open_table(str(tmp_path / "t")).card
    assert card["settings"]["split"]["by"] == "model_id" and card["settings"]["write"]["compact_mb"] == 0


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """A read-only static file server that answers range requests (as S3, nginx, ... do)."""

    def log_message(self, *args):
        pass

    def end_headers(self):
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def do_GET(self):
        path, wanted = self.translate_path(self.path), self.headers.get("Range")
        if not wanted or not os.path.isfile(path):
            return super().do_GET()
        size = os.path.getsize(path)
        first, last = wanted.removeprefix("bytes=").split("-")
        start, end = (size - int(last), size - 1) if first == "" else (int(first), int(last or size - 1))
        end = min(end, size - 1)
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def read_only_http_server(tmp_path):
    handler = functools.partial(RangeRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_read_only_destination_is_refused_and_its_table_stays_readable(
    tmp_path, zoo_writers, capsys, read_only_http_server
):
    """A complete table served read-only over HTTP: a rerun fails fast, the table still reads (over HTTP)."""
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=6)
    args = ["ingest", str(tmp_path / "zoo"), "--format", "smallcnnzoo", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "table"), "--no-ray"]) == 0
    card = (tmp_path / "table/_zoo.json").read_bytes()
    capsys.readouterr()
    assert main([*args, "--out", f"{read_only_http_server}/table", "--overwrite"]) == 2
    assert "is read-only" in capsys.readouterr().err
    assert (tmp_path / "table/_zoo.json").read_bytes() == card
    table = open_table(f"{read_only_http_server}/table")
    assert sum(ws.batch_size for ws, _ in table.batches(4)) == 6 == table.num_rows()


@pytest.mark.ray
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_complete_table_in_a_read_only_folder_stays_readable(tmp_path, zoo_writers, capsys, ray_local):
    zoo_writers.smallcnnzoo(tmp_path / "zoo", n=6)
    out = tmp_path / "table"
    assert main(["ingest", str(tmp_path / "zoo"), "--format", "smallcnnzoo", "--out", str(out), "--no-progress"]) == 0
    for folder, _, _ in os.walk(out):
        os.chmod(folder, 0o555)
    try:
        code = main(["ingest", str(tmp_path / "zoo"), "--format", "smallcnnzoo", "--out", str(out), "--overwrite"])
        assert code == 2 and "permission denied" in capsys.readouterr().err
        assert open_table(str(out)).num_rows() == 6
    finally:
        for folder, _, _ in os.walk(out):
            os.chmod(folder, 0o755)


def test_ingest_and_storage_errors_from_any_command_print_one_line(monkeypatch, capsys):
    """The pipeline runs ingest itself: its IngestError (e.g. the table already holds another zoo) is a
    user error there too. Unexpected exceptions keep their traceback."""
    import cluster.commands.pipeline as command
    from zoo_ingest import IngestError, StorageError

    for exc in (
        IngestError("t: already holds a complete weight table; pass --overwrite"),
        StorageError("destination s3://b/t is not writable: permission denied"),
    ):

        def fail(args, exc=exc):
            raise exc

        monkeypatch.setattr(command, "run", fail)
        assert main(["pipeline", "--config", "configs/quickstart.yaml"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"metazoo pipeline: error: {exc}" and "Traceback" not in err

    def crash(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(command, "run", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["pipeline", "--config", "configs/quickstart.yaml"])
