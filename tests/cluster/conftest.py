"""Fixtures for the cluster tests: a real Ray head on 127.0.0.1, and a shell with no Ray token."""

from __future__ import annotations

import pytest

from cluster.commands.submit import CREDENTIAL_ENV, FORWARDED_ENV

# Variables that would change which cluster, token or environment a test sees.
_AMBIENT = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE",
            *FORWARDED_ENV, *CREDENTIAL_ENV)


@pytest.fixture(scope="session")
def ray_head():
    """A one-node Ray cluster (`ray start --head`) on 127.0.0.1 with token auth, its own temp dir.

    Stopping it ends only the processes it started; other Ray instances on the machine are untouched.
    """
    from cluster.local_ray import LocalRayHead

    with LocalRayHead(num_cpus=1) as head:
        yield head


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """A shell with no Ray address, no Ray token (HOME is empty: no ~/.ray/auth_token) and no AWS/MLflow vars."""
    for name in _AMBIENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return monkeypatch
