"""A one-node Ray cluster on 127.0.0.1 in a subprocess, with its own temp dir and token (tests, demos).

Where Ray binds, as measured with Ray 2.60 on Linux:
- `ray start --head --node-ip-address=127.0.0.1` does not keep 127.0.0.1: Ray turns a loopback node
  address into the machine's interface address (`services.resolve_ip_for_localhost`), so the node
  registers as e.g. 192.0.2.2, and the GCS, raylet, dashboard agent, runtime-env agent and Ray Client
  server listen on that interface or on all interfaces. Only the dashboard follows `--dashboard-host`.
- With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the switch Ray uses on laptops to keep a single-node
  cluster local) the node address stays 127.0.0.1 and every listener binds to 127.0.0.1. This
  module sets it; it forbids adding other nodes, which a local test cluster never does.

`stop()` ends only the processes this head started (the `ray start --block` process and its
descendants), never other Ray instances on the machine: `ray stop` would stop every Ray on the host.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class LocalRayHead:
    """`ray start --head --block` on 127.0.0.1 with token authentication, as a context manager.

    Attributes once started: `dashboard_url` (Jobs API), `gcs_address`, `token` (secret: never
    print it), `token_path`, `temp_dir` (Ray's logs are under `temp_dir/session_latest/logs`).
    `env` adds environment variables for the head and so for the jobs it runs.
    """

    def __init__(self, num_cpus: int = 1, env: dict[str, str] | None = None, keep_temp_dir: bool = False):
        self.num_cpus = num_cpus
        self.extra_env = dict(env or {})
        self.keep_temp_dir = keep_temp_dir
        self.process: subprocess.Popen | None = None
        self.temp_dir: Path | None = None
        self.token = ""
        self.token_path: Path | None = None
        self.dashboard_url = ""
        self.gcs_address = ""

    def __enter__(self) -> LocalRayHead:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS",
                                                              "RAY_AUTH_TOKEN")}
        bin_dir = str(Path(sys.executable).parent)  # jobs find this environment's python and metazoo
        env.update(
            PATH=bin_dir + os.pathsep + env.get("PATH", ""),
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keep the node on 127.0.0.1 (see the module docstring)
            RAY_USAGE_STATS_ENABLED="0",
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = 120.0) -> LocalRayHead:
        # short path: Ray's unix sockets live under it, and socket paths are limited to ~107 bytes
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mzray-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.token = secrets.token_hex(32)
        self.token_path = self.temp_dir / "auth_token"
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        gcs_port, dashboard_port = free_port(), free_port()
        ray = str(Path(sys.executable).parent / "ray")
        command = [
            ray if os.path.exists(ray) else "ray", "start", "--head", "--block",
            f"--node-ip-address={LOOPBACK}", f"--port={gcs_port}",
            "--include-dashboard=true", f"--dashboard-host={LOOPBACK}", f"--dashboard-port={dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
            f"--temp-dir={self.temp_dir}", f"--num-cpus={self.num_cpus}", "--num-gpus=0",
            "--disable-usage-stats",
        ]
        log = open(self.temp_dir / "ray-start.log", "w")  # the child keeps its own handle
        self.process = subprocess.Popen(command, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.gcs_address = f"{LOOPBACK}:{gcs_port}"
        self.dashboard_url = f"http://{LOOPBACK}:{dashboard_port}"
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        headers = {"Authorization": f"Bearer {self.token}"}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.dashboard_url}/api/version", headers=headers, timeout=2).ok:
                    return
            except requests.exceptions.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the local Ray head did not answer within {timeout_s:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        path = self.temp_dir / "ray-start.log" if self.temp_dir else None
        if not path or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def listeners(self) -> list[str]:
        """The `host:port` addresses this head's processes listen on (TCP), e.g. to check the binding."""
        import psutil

        pids = {p.pid for p in self._processes()}
        out = set()
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
                out.add(f"{conn.laddr.ip}:{conn.laddr.port}")
        return sorted(out)

    def _processes(self) -> list:
        import psutil

        if self.process is None:
            return []
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the `ray start --block` process (it shuts its node down), then end any descendant left."""
        import psutil

        if self.process is not None:
            started = self._processes()
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            left = [p for p in started[1:] if p.is_running()]
            for proc in left:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.terminate()
            _, alive = psutil.wait_procs(left, timeout=5)
            for proc in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            self.process = None
        if self.temp_dir is not None and not self.keep_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

