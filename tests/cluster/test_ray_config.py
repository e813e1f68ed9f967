"""ray_config.yaml: valid for Ray's cluster launcher (checked offline), GPU workers, no credentials in it."""

from __future__ import annotations

import copy
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "ray_config.yaml"

# What a credential looks like in a file: AWS key ids and secrets, Ray tokens (64 hex), private keys,
# and assignments of secret-named variables to literal values.
CREDENTIAL_PATTERNS = [
    r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])",
    r"\b[0-9a-f]{64}\b",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"(?i)(secret|password|passwd|session_token|auth_token|access_key|access_key_id)\s*[:=]\s*['\"]?[^\s'\"$]{6,}",
]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_starts_with_its_launch_command():
    assert CONFIG.read_text().splitlines()[0].startswith("# ray up ray_config.yaml")


def test_passes_rays_own_validation_without_cloud_access(config, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("validating the cluster config tried to reach the network")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_cpu_head_and_single_and_multi_gpu_workers(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpus = sorted(t["resources"].get("GPU", 0) for t in workers.values())
    assert gpus[0] == 1 and gpus[-1] > 1, gpus
    assert all(t.get("min_workers", 0) == 0 for t in workers.values())  # GPUs only while jobs need them
    assert sum(t["max_workers"] for t in workers.values()) >= config["max_workers"] >= 1


def test_installs_the_synced_checkout(config):
    assert config["file_mounts"] == {"~/metazoo": "."}
    commands = " ".join(config["setup_commands"])
    assert "pip install" in commands and "-e ~/metazoo" in commands
    assert "~/.ray/auth_token" in config["cluster_synced_files"]  # the workers get the head's token


def _env_file_command(config) -> str:
    (command,) = [c for c in config["setup_commands"] if "~/.metazoo_env" in c and "printf" in c]
    return command


def test_every_node_gets_the_job_environment(config, tmp_path):
    """Run the command that writes ~/.metazoo_env (as on a worker), then read back what a job would see."""
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"], "RAY_HEAD_IP": "10.0.0.5"}
    subprocess.run(["bash", "-c", _env_file_command(config)], env=env, check=True)
    shown = subprocess.run(["bash", "-c", ". ~/.metazoo_env && env"], env=env, check=True,
                           capture_output=True, text=True).stdout
    seen = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert seen["MLFLOW_TRACKING_URI"] == "http://10.0.0.5:5000"
    assert seen["AWS_REGION"] == seen["AWS_DEFAULT_REGION"] == config["provider"]["region"]
    assert seen["AWS_ENDPOINT_URL_S3"].startswith("https://s3.")
    assert seen["RAY_AUTH_MODE"] == "token"
    assert seen["PATH"].startswith(f"{tmp_path}/metazoo-venv/bin:")
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN"} & set(seen)


def test_head_keeps_the_dashboard_local_and_token_auth_on(config):
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "get-auth-token --generate" in start
    assert "0.0.0.0" not in start.split("mlflow server")[0]


@pytest.mark.parametrize("key", ["setup_commands", "head_start_ray_commands", "worker_start_ray_commands"])
def test_shell_commands_parse(config, key):
    for command in config[key]:
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert result.returncode == 0, f"{command}\n{result.stderr}"


def test_no_credentials_in_the_file():
    text = CONFIG.read_text()
    for pattern in CREDENTIAL_PATTERNS:
        found = re.search(pattern, text)
        assert found is None, f"credential-like text in ray_config.yaml: pattern {pattern!r}"


def test_credential_check_catches_credentials():
    """The patterns above are not vacuous: each kind of secret would be caught."""
    samples = ["aws_access_key_id: AKIAIOSFODNN7EXAMPLE",
               "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
               "RAY_AUTH_TOKEN=" + "ab" * 32, "-----BEGIN RSA PRIVATE KEY-----", "password: hunter22"]
    for sample in samples:
        assert any(re.search(p, sample) for p in CREDENTIAL_PATTERNS), sample
