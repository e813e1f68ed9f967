"""Shared fixtures. Services the tests need (Ray, S3, MLflow) are real processes on 127.0.0.1."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance on 127.0.0.1 for the whole test session."""
    import ray

    from zoo_ingest.ray_runtime import ensure_ray

    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray(num_cpus=4)  # logical CPUs: 2 training workers + Ray Data tasks
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 for the whole session, with an empty bucket.

    Yields {"options": storage options (endpoint_url, region, key, secret), "bucket": name}. Tests pass
    the options explicitly, as a user would for MinIO or S3.
    """
    import logging
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "region": "us-east-1", "key": "testing",
               "secret": "testing-secret"}
    client = boto3.client("s3", endpoint_url=options["endpoint_url"], region_name=options["region"],
                          aws_access_key_id=options["key"], aws_secret_access_key=options["secret"])
    client.create_bucket(Bucket="metazoo-test")
    yield {"options": options, "bucket": "metazoo-test"}
    server.stop()


@pytest.fixture(scope="session")
def digits_cnn_table(tmp_path_factory, ray_local):
    """A small real digits-cnn zoo (trained here) ingested into a weight table, split by network.

    Returns the table URI; the ReLU and tanh networks form two architectures.
    """
    from zoo_ingest import ingest
    from zoo_ingest.generate import generate

    root = tmp_path_factory.mktemp("digits-cnn")
    generate("digits-cnn", str(root / "zoo"), n=48, seed=0, progress=False, summary=False)
    ingest(str(root / "zoo"), str(root / "table"), format="checkpoints", zoo="digits-cnn",
           split_by="network_id", progress=False)
    return str(root / "table")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite store; yields its URL."""
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
