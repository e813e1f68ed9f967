"""`metazoo submit`: argument handling, token lookup, fast failures, and real jobs on a local Ray head."""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import cli
from cluster.commands import submit
from cluster.ray_auth import RayAuthError, find_token, token_for_request
from cluster.ray_jobs import check_dashboard, connect, dashboard_url, follow

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-secret-do-not-print-0123456789"


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- arguments and the job's command line -------------------------------------------------------


def test_everything_after_the_separator_is_the_jobs_command():
    parser = cli.build_parser("submit")
    args = parser.parse_args(["submit", "--address", "http://h:8265", "--env", "A=1", "--",
                              "train", "--config", "c.yaml", "epochs=1", "--address", "not-ours"])
    assert args.command == "submit" and args.address == "http://h:8265" and args.env == ["A=1"]
    assert args.job_command == ["--", "train", "--config", "c.yaml", "epochs=1", "--address", "not-ours"]


@pytest.mark.parametrize("command", [
    ["train", "--config", "configs/a b.yaml", "epochs=1"],
    ["ingest", "s3://bucket/zoo; rm -rf ~", "--out", "$HOME/`x`", "--zoo", "it's"],
])
def test_entrypoint_quotes_every_argument_for_the_shell(command):
    line = submit.entrypoint(command)
    assert line.startswith("metazoo ")
    assert shlex.split(line) == ["metazoo", *command]


def test_no_command_is_a_clear_error(clean_env, capsys):
    assert cli.main(["submit", "--address", "http://127.0.0.1:1", "--"]) == 2
    assert "give the metazoo command after --" in capsys.readouterr().err


# --- the job's environment ------------------------------------------------------------------------


def test_forwards_service_locations_and_credentials_only_when_set():
    environ = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "AWS_REGION": "eu-west-1",
               "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET, "HOME": "/root",
               "RAY_AUTH_TOKEN": "never-forwarded", "AWS_ENDPOINT_URL": ""}
    env, secrets = submit.job_env(["EPOCHS=2", "AWS_REGION=us-east-1"], environ)
    assert env == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "AWS_REGION": "us-east-1", "EPOCHS": "2",
                   "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET}
    assert set(secrets) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    env, secrets = submit.job_env([], environ, forward_credentials=False)
    assert "AWS_SECRET_ACCESS_KEY" not in env and "AWS_ACCESS_KEY_ID" not in env and not secrets
    env, _ = submit.job_env([], {})
    assert env == {}


def test_notes_on_services_only_this_machine_can_reach():
    notes = submit._local_only_notes({"MLFLOW_TRACKING_URI": "http://user:pw-secret@127.0.0.1:5000",
                                      "AWS_ENDPOINT_URL": "http://minio.internal:9000"})
    assert len(notes) == 1 and "MLFLOW_TRACKING_URI points at 127.0.0.1" in notes[0]
    assert "pw-secret" not in notes[0]
    (note,) = submit._local_only_notes({"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"})
    assert "relative sqlite path" in note
    assert submit._local_only_notes({"MLFLOW_TRACKING_URI": "sqlite:////srv/mlflow.db"}) == []


@pytest.mark.parametrize("bad", ["NOEQUALS", "1X=2", "A B=3", "=x"])
def test_malformed_env_override_is_rejected(bad):
    with pytest.raises(ValueError, match="KEY=VALUE"):
        submit.job_env([bad], {})


def test_missing_working_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--working-dir"):
        submit.runtime_env(str(tmp_path / "nope"), {})
    renv = submit.runtime_env(str(tmp_path), {"A": "1"})
    assert renv["working_dir"] == str(tmp_path) and renv["env_vars"] == {"A": "1"} and ".venv" in renv["excludes"]


# --- what submit does with the job, against a stand-in client --------------------------------------


class _FakeClient:
    def __init__(self, error: str | None = None):
        self.error, self.submitted = error, []

    def submit_job(self, *, entrypoint, runtime_env, metadata):
        if self.error:
            raise RuntimeError(self.error)
        self.submitted.append((entrypoint, runtime_env))
        return "raysubmit_fake"


def _run_with(monkeypatch, client, follow, argv):
    import cluster.ray_jobs

    monkeypatch.setattr(cluster.ray_jobs, "connect", lambda url: client)
    monkeypatch.setattr(cluster.ray_jobs, "follow", follow)
    return cli.main(["submit", "--address", "http://10.0.0.1:8265", *argv])


def test_ctrl_c_stops_following_and_says_how_to_stop_the_job(monkeypatch, clean_env, tmp_path, capsys):
    def interrupted(client, job_id):
        raise KeyboardInterrupt

    client = _FakeClient()
    assert _run_with(monkeypatch, client, interrupted, ["--working-dir", str(tmp_path), "--", "--help"]) == 130
    err = capsys.readouterr().err
    assert "still running" in err and "ray job stop --address http://10.0.0.1:8265 raysubmit_fake" in err
    assert client.submitted[0][0] == "metazoo --help"


@pytest.mark.parametrize(("status", "exit_code", "expected"), [
    ("SUCCEEDED", 0, 0), ("FAILED", 3, 3), ("FAILED", None, 1), ("STOPPED", None, 1), ("FAILED", -9, 1)])
def test_exit_status_follows_the_job(monkeypatch, clean_env, tmp_path, capsys, status, exit_code, expected):
    from cluster.ray_jobs import JobResult

    def finished(client, job_id):
        return JobResult(job_id, status, exit_code, "Job entrypoint command failed, last available logs: ...")

    argv = ["--working-dir", str(tmp_path), "--", "train", "--config", "c.yaml"]
    assert _run_with(monkeypatch, _FakeClient(), finished, argv) == expected
    assert f"job raysubmit_fake {status}" in capsys.readouterr().err


def test_no_wait_returns_after_submitting(monkeypatch, clean_env, tmp_path, capsys):
    def never(client, job_id):
        raise AssertionError("--no-wait must not follow the job")

    assert _run_with(monkeypatch, _FakeClient(), never, ["--no-wait", "--working-dir", str(tmp_path), "--",
                                                         "--help"]) == 0
    assert "ray job logs --address http://10.0.0.1:8265 --follow raysubmit_fake" in capsys.readouterr().err


def test_refused_submission_is_reported_without_secrets(monkeypatch, clean_env, tmp_path, capsys):
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    client = _FakeClient(error=f"Request failed with status code 400: bad runtime_env {{'x': '{SECRET}'}}")
    code = _run_with(monkeypatch, client, None, ["--working-dir", str(tmp_path), "--", "--help"])
    err = capsys.readouterr().err
    assert code == 2 and "did not accept the job" in err and "***" in err and SECRET not in err


# --- tokens, as Ray documents them ---------------------------------------------------------------


def test_token_sources_in_rays_order(tmp_path, clean_env):
    home = Path(os.environ["HOME"])
    assert find_token() is None
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("from-default-file\n")
    assert find_token().value == "from-default-file"
    path = tmp_path / "token"
    path.write_text("from-path")
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert find_token().value == "from-path" and "RAY_AUTH_TOKEN_PATH" in find_token().source
    clean_env.setenv("RAY_AUTH_TOKEN", "from-env")
    token = find_token()
    assert token.value == "from-env" and token.source == "RAY_AUTH_TOKEN"
    assert "from-env" not in repr(token) and token.headers() == {"Authorization": "Bearer from-env"}


def test_unreadable_token_path_is_an_error_not_a_fallback(tmp_path, clean_env):
    home = Path(os.environ["HOME"])
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("default")
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(RayAuthError, match="RAY_AUTH_TOKEN_PATH"):
        find_token()
    (tmp_path / "empty").write_text("\n")
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "empty"))
    with pytest.raises(RayAuthError, match="empty"):
        find_token()


def test_auth_mode(clean_env):
    clean_env.setenv("RAY_AUTH_TOKEN", "tok")
    assert token_for_request().value == "tok"
    clean_env.setenv("RAY_AUTH_MODE", "disabled")
    assert token_for_request() is None
    clean_env.setenv("RAY_AUTH_MODE", "token")
    clean_env.delenv("RAY_AUTH_TOKEN")
    with pytest.raises(RayAuthError, match="RAY_AUTH_TOKEN.*ray get-auth-token"):
        token_for_request()


# --- addresses: bad ones fail within seconds ------------------------------------------------------


def test_dashboard_url_forms():
    assert dashboard_url("127.0.0.1:8265") == "http://127.0.0.1:8265"
    assert dashboard_url("https://head.example:443/") == "https://head.example:443"
    with pytest.raises(ValueError, match="dashboard"):
        dashboard_url("ray://head:10001")


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


@pytest.mark.timeout(60)
def test_refused_address_fails_with_a_clear_message(clean_env, capsys):
    with _listening_socket() as sock:
        port = sock.getsockname()[1]
    assert cli.main(["submit", "--address", f"127.0.0.1:{port}", "--retry-for", "0", "--", "--help"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Ray dashboard at http://127.0.0.1:{port}" in err and "Connection refused" in err


@pytest.mark.timeout(60)
def test_silent_server_times_out_instead_of_hanging():
    with _listening_socket() as sock:  # accepts connections (backlog) and never answers
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(ConnectionError, match="no reply within 1 s"):
            check_dashboard(url, None, connect_timeout=1, read_timeout=1)


# --- real jobs on a local Ray head ---------------------------------------------------------------


@pytest.mark.ray
def test_head_listens_on_loopback_only(ray_head):
    listeners = ray_head.listeners()
    assert listeners and ray_head.dashboard_url.removeprefix("http://") in listeners
    assert all(addr.startswith(("127.0.0.1:", "::ffff:127.0.0.1:")) for addr in listeners), listeners


@pytest.mark.ray
def test_submit_streams_the_logs_and_succeeds(ray_head, clean_env, tmp_path, capsys):
    clean_env.setenv("RAY_AUTH_TOKEN", ray_head.token)
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    code = cli.main(["submit", "--address", ray_head.dashboard_url, "--working-dir", str(tmp_path),
                     "--", "--help"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "usage: metazoo" in out and "Running entrypoint for job" in out  # the job's own output
    assert "SUCCEEDED" in err and "AWS_SECRET_ACCESS_KEY" in err
    assert ray_head.token not in out + err and SECRET not in out + err


@pytest.mark.ray
def test_failing_job_gives_its_exit_status(ray_head, clean_env, tmp_path, capsys):
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(ray_head.token_path))
    code = cli.main(["submit", "--address", ray_head.dashboard_url, "--working-dir", str(tmp_path),
                     "--", "no-such-command"])
    out, err = capsys.readouterr()
    assert code == 2, err  # metazoo's exit code for an unknown command, passed through
    assert "unknown command 'no-such-command'" in out and "FAILED (exit code 2)" in err


PROBE = """
import hashlib, os, cluster
for name in ("MLFLOW_TRACKING_URI", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY"):
    value = os.environ.get(name)
    print(name, "unset" if value is None else hashlib.sha256(value.encode()).hexdigest())
print("cluster package at", os.path.dirname(cluster.__file__))
"""


@pytest.mark.ray
def test_job_gets_the_forwarded_environment_and_runs_the_submitted_code(ray_head, clean_env):
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(ray_head.token_path))
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    clean_env.setenv("AWS_REGION", "eu-west-1")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    env, secrets = submit.job_env([])
    assert secrets == ["AWS_SECRET_ACCESS_KEY"]
    client = connect(ray_head.dashboard_url)
    job_id = client.submit_job(entrypoint=shlex.join(["python", "-c", PROBE]),
                               runtime_env=submit.runtime_env(str(ROOT), env))
    logs = io.StringIO()
    result = follow(client, job_id, out=logs)
    text = logs.getvalue()
    assert result.succeeded, text
    assert f"MLFLOW_TRACKING_URI {_sha('http://127.0.0.1:5000')}" in text
    assert f"AWS_REGION {_sha('eu-west-1')}" in text
    assert "AWS_ENDPOINT_URL unset" in text  # not set here, so not forwarded
    assert f"AWS_SECRET_ACCESS_KEY {_sha(SECRET)}" in text and SECRET not in text
    package = text.split("cluster package at ")[1].split()[0]
    # Ray puts the uploaded working dir first on PYTHONPATH: the job runs this checkout's code
    assert "working_dir_files" in package and not package.startswith(str(ROOT))


@pytest.mark.ray
def test_missing_token_gives_a_clear_message(ray_head, clean_env, tmp_path, capsys):
    code = cli.main(["submit", "--address", ray_head.dashboard_url, "--working-dir", str(tmp_path),
                     "--", "--help"])
    err = capsys.readouterr().err
    assert code == 2
    assert "requires an authentication token" in err
    assert "RAY_AUTH_TOKEN" in err and "~/.ray/auth_token" in err and "ray get-auth-token" in err


@pytest.mark.ray
def test_wrong_token_is_rejected_without_being_shown(ray_head, clean_env, tmp_path, capsys):
    clean_env.setenv("RAY_AUTH_TOKEN", "wrong-token-value")
    code = cli.main(["submit", "--address", ray_head.dashboard_url, "--working-dir", str(tmp_path),
                     "--", "--help"])
    err = capsys.readouterr().err
    assert code == 2 and "rejected the token from RAY_AUTH_TOKEN" in err
    assert "wrong-token-value" not in err


@pytest.mark.ray
def test_ray_job_submit_is_equivalent_with_token_mode_set(ray_head, clean_env, tmp_path):
    """The docs' `ray job submit` form: Ray's CLI sends the token only when RAY_AUTH_MODE=token is set."""
    ray = str(Path(sys.executable).parent / "ray")
    command = [ray, "job", "submit", "--no-wait", "--address", ray_head.dashboard_url,
               "--working-dir", str(tmp_path), "--", "metazoo", "--help"]
    env = dict(os.environ, RAY_AUTH_TOKEN=ray_head.token)
    runs = [subprocess.Popen(command, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for e in (env, dict(env, RAY_AUTH_MODE="token"))]  # side by side: each CLI start imports ray
    (refused, refused_rc), (accepted, accepted_rc) = [(p.communicate(timeout=120)[0], p.returncode) for p in runs]
    assert refused_rc != 0 and "Missing authentication token" in refused
    assert accepted_rc == 0 and "submitted successfully" in accepted, accepted[-3000:]


# --- a busy head: retried, other errors not -----------------------------------------------------


@pytest.mark.parametrize("argv", [["train", "--config", "c.yaml"], ["--", "metazoo", "train", "--config", "c.yaml"],
                                  ["metazoo", "train", "--config", "c.yaml"]])
def test_a_leading_metazoo_in_the_job_command_is_dropped(argv):
    assert submit.job_command(argv) == ["train", "--config", "c.yaml"]
    assert submit.entrypoint(submit.job_command(argv)) == "metazoo train --config c.yaml"


class _FakeHead:
    """A real HTTP server on 127.0.0.1 answering like a Ray dashboard whose job agent is busy: the first
    `refusals` job submissions get HTTP 500 "No available agent ... try again later", later ones succeed."""

    def __init__(self, refusals: int, port: int = 0, status: int = 500, text: str | None = None):
        import http.server
        import json
        import threading

        import ray

        head = self
        self.posts = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test's output clean
                pass

            def _reply(self, code, body, kind="application/json"):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.startswith("/api/version"):
                    self._reply(200, json.dumps({"version": "4", "ray_version": ray.__version__,
                                                 "ray_commit": "x", "session_name": "fake"}))
                else:
                    self._reply(404, "{}")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                head.posts.append(body)
                if len(head.posts) <= refusals:
                    self._reply(status, text or "No available agent to submit job, please try again later",
                                "text/plain")
                else:
                    self._reply(200, json.dumps({"submission_id": "raysubmit_after_retries",
                                                 "job_id": "raysubmit_after_retries"}))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.timeout(60)
def test_busy_head_is_retried_until_it_accepts(clean_env, capsys):
    head = _FakeHead(refusals=2)
    try:
        code = cli.main(["submit", "--address", head.url, "--no-wait", "--retry-for", "30",
                         "--working-dir", "s3://bucket/code.zip", "--", "metazoo", "pipeline", "--config", "q.yaml"])
    finally:
        head.close()
    err = capsys.readouterr().err
    assert code == 0 and len(head.posts) == 3
    assert err.count("No available agent to submit job, please try again later; retrying in") == 2
    assert "submitted job raysubmit_after_retries" in err
    assert head.posts[-1]["entrypoint"] == "metazoo pipeline --config q.yaml"


@pytest.mark.timeout(60)
def test_busy_head_past_the_retry_time_fails_and_other_errors_fail_at_once(clean_env, capsys):
    head = _FakeHead(refusals=100)
    try:
        code = cli.main(["submit", "--address", head.url, "--no-wait", "--retry-for", "1.5",
                         "--working-dir", "s3://bucket/code.zip", "--", "--help"])
    finally:
        head.close()
    err = capsys.readouterr().err
    assert code == 2 and 2 <= len(head.posts) <= 3 and "try again later" in err.splitlines()[-1]
    assert "did not accept the job" in err

    head = _FakeHead(refusals=100, status=400, text="bad runtime_env")
    try:
        code = cli.main(["submit", "--address", head.url, "--no-wait", "--retry-for", "30",
                         "--working-dir", "s3://bucket/code.zip", "--", "--help"])
    finally:
        head.close()
    err = capsys.readouterr().err
    assert code == 2 and len(head.posts) == 1 and "retrying" not in err and "bad runtime_env" in err


@pytest.mark.timeout(60)
def test_refused_connection_is_retried_until_the_head_listens(clean_env, capsys):
    import threading

    with _listening_socket() as sock:
        port = sock.getsockname()[1]
    started = []
    # the head comes up about 1.5 s after the first refused attempt, on the port that refused
    timer = threading.Timer(1.5, lambda: started.append(_FakeHead(refusals=0, port=port)))
    timer.start()
    try:
        code = cli.main(["submit", "--address", f"127.0.0.1:{port}", "--no-wait", "--retry-for", "30",
                         "--working-dir", "s3://bucket/code.zip", "--", "--help"])
    finally:
        timer.join()
        for head in started:
            head.close()
    err = capsys.readouterr().err
    assert code == 0 and "connection refused; retrying in" in err and len(started[0].posts) == 1
