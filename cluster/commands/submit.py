"""`metazoo submit --address URL [--working-dir .] [--env KEY=VALUE ...] [--no-wait] -- <metazoo command ...>`

Runs `metazoo <command ...>` as a Ray job on a cluster, through Ray's Jobs API: the working directory
is uploaded (Ray puts it first on the job's PYTHONPATH, so the job runs this checkout's code), the
environment that says where MLflow and S3 are is forwarded, the job's logs stream to stdout, and the
exit status is the job's (0 when it SUCCEEDED). Equivalent to
`ray job submit --address URL --working-dir . -- metazoo <command ...>` plus the environment.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Mapping
from urllib.parse import urlsplit

# Where the job's services are: forwarded when set here.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
# Credentials: forwarded only when set here (and not with --no-credentials); their values are never shown.
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Local state that must not be uploaded with the working directory (gitignored files are skipped too).
WORKING_DIR_EXCLUDES = [".git", ".venv", "zoo_store", "mlartifacts", "mlruns", "mlflow.db", "*.egg-info",
                        "__pycache__", ".pytest_cache", ".ruff_cache"]
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "metazoo submit --address URL [options] -- COMMAND [ARGS ...]"
    parser.epilog = ("example: metazoo submit --address http://127.0.0.1:8265 -- train --config "
                     "configs/digits-cnn/hnp.yaml epochs=1. The cluster's token is read as Ray reads it "
                     "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); see docs/cluster.md.")
    parser.add_argument("--address", default=None, metavar="URL",
                        help="the head node's dashboard URL, e.g. http://127.0.0.1:8265 "
                             "(default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS)")
    parser.add_argument("--working-dir", default=".", metavar="DIR",
                        help="directory uploaded as the job's working directory (default: .)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="set an environment variable for the job (repeatable; overrides forwarded ones)")
    parser.add_argument("--no-credentials", action="store_true",
                        help="do not forward AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN "
                             "(the cluster has its own, e.g. an instance profile)")
    parser.add_argument("--no-wait", action="store_true",
                        help="submit and return; do not follow the logs")
    parser.add_argument("--retry-for", type=float, default=None, metavar="SECONDS",
                        help="retry a head that refuses connections or asks to be tried again later for up "
                             "to this long, with backoff (default 60; 0: fail at once)")
    parser.add_argument("job_command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the metazoo command to run on the cluster, after --")


def job_env(overrides: list[str], environ: Mapping[str, str] | None = None,
            forward_credentials: bool = True) -> tuple[dict[str, str], list[str]]:
    """The job's environment variables and the names of the secret ones among them.

    Forwarded from `environ` when set: FORWARDED_ENV, then CREDENTIAL_ENV (if `forward_credentials`);
    `overrides` ("KEY=VALUE") win over both.
    """
    environ = os.environ if environ is None else environ
    names = FORWARDED_ENV + (CREDENTIAL_ENV if forward_credentials else ())
    env = {name: environ[name] for name in names if environ.get(name)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.fullmatch(key):
            raise ValueError(f"--env {item.split('=')[0]!r}: expected KEY=VALUE with KEY a variable name")
        env[key] = value
    secrets = [name for name in env if name in CREDENTIAL_ENV or "SECRET" in name or "TOKEN" in name
               or "PASSWORD" in name]
    return env, secrets


def job_command(argv: list[str]) -> list[str]:
    """The metazoo arguments after `--`; a leading `metazoo` (typed from `ray job submit` habit) is dropped."""
    command = list(argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if command[:1] == ["metazoo"]:
        command = command[1:]
    return command


def entrypoint(command: list[str]) -> str:
    """The shell command the job runs: `metazoo` and the arguments, each quoted for the shell."""
    return shlex.join(["metazoo", *job_command(command)])


def runtime_env(working_dir: str, env_vars: dict[str, str]) -> dict:
    """Ray runtime environment: the working directory to upload and the job's environment variables."""
    if "://" not in working_dir:  # a local directory (Ray also takes s3://.../dir.zip and the like)
        if not os.path.isdir(working_dir):
            raise FileNotFoundError(f"--working-dir {working_dir}: no such directory")
        working_dir = os.path.abspath(working_dir)
    return {"working_dir": working_dir, "excludes": list(WORKING_DIR_EXCLUDES), "env_vars": dict(env_vars)}


def _redact(text: str, env: Mapping[str, str], secrets: list[str]) -> str:
    for name in secrets:
        if env.get(name):
            text = text.replace(env[name], "***")
    return text


def _local_only_notes(env: Mapping[str, str]) -> list[str]:
    """Notes on forwarded service locations that only make sense on this machine (values not shown:
    a URL may carry a password)."""
    notes = []
    for name in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        value = env.get(name, "")
        if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
            notes.append(f"{name} is a relative sqlite path: on the cluster it lands in the job's temporary "
                         "working directory and is lost; use a tracking server or an absolute path")
        elif value.startswith(("file:", "/", "./")):
            notes.append(f"{name} is a path on this machine; a remote cluster has its own disks")
        elif "://" in value and (urlsplit(value).hostname or "") in _LOOPBACK:
            notes.append(f"{name} points at {urlsplit(value).hostname}, this machine; a job on a remote "
                         "cluster cannot reach it (fine if the cluster runs here)")
    return notes


def _quiet_ray_client_logs() -> None:
    """Ray's job client logs each packaging step and socket close at INFO; keep its warnings only."""
    import logging

    import ray.job_submission  # noqa: F401 - its modules set their loggers to INFO when imported

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _follow_hint(url: str, job_id: str) -> str:
    return (f"  follow: ray job logs --address {url} --follow {job_id}\n"
            f"  status: ray job status --address {url} {job_id}\n"
            f"  stop:   ray job stop --address {url} {job_id}\n"
            "  (the ray CLI sends the cluster's token when RAY_AUTH_MODE=token is set; see docs/cluster.md)")


def run(args: argparse.Namespace) -> int:
    import requests

    from cluster import ray_jobs
    from cluster.ray_jobs import RETRY_FOR_S, dashboard_url, with_retries

    command = job_command(args.job_command)
    if not command:
        raise ValueError("no command to run: give the metazoo command after --, "
                         "e.g. metazoo submit --address http://127.0.0.1:8265 -- pipeline --config "
                         "configs/quickstart.yaml")
    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ValueError("no cluster address: pass --address http://HEAD:8265 (the head node's dashboard)")
    url = dashboard_url(address)
    env, secrets = job_env(args.env, forward_credentials=not args.no_credentials)
    renv = runtime_env(args.working_dir, env)
    for note in _local_only_notes(env):
        print(f"note: {note}", file=sys.stderr)

    retry_for = RETRY_FOR_S if args.retry_for is None else max(0.0, args.retry_for)
    client = with_retries(lambda: ray_jobs.connect(url), f"the Ray head at {url}", retry_for)
    _quiet_ray_client_logs()
    line = entrypoint(command)
    if "://" not in renv["working_dir"]:
        print(f"uploading {renv['working_dir']} as the job's working directory", file=sys.stderr)
    try:
        job_id = with_retries(lambda: client.submit_job(entrypoint=line, runtime_env=renv,
                                                        metadata={"submitted_by": "metazoo submit"}),
                              f"submitting to {url}", retry_for)
    except (RuntimeError, requests.exceptions.RequestException) as exc:  # Ray's client reports HTTP
        # errors (bad runtime_env, a busy head past --retry-for) as RuntimeError
        raise ConnectionError(f"the Ray cluster at {url} did not accept the job: "
                              f"{_redact(str(exc), env, secrets)}") from None
    forwarded = ", ".join(sorted(env)) or "nothing"
    print(f"submitted job {job_id} to {url}: {line}\n  environment: {forwarded}"
          + (" (secret values not shown)" if secrets else ""), file=sys.stderr)
    if any(name in CREDENTIAL_ENV for name in env):
        print("  note: AWS credentials travel as job environment variables, which Ray keeps in the job's "
              "record and the head node's logs; on a shared cluster prefer an instance profile and "
              "--no-credentials", file=sys.stderr)
    if args.no_wait:
        print(_follow_hint(url, job_id), file=sys.stderr)
        return 0
    try:
        result = ray_jobs.follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following job {job_id}; it is still running on the cluster.\n"
              + _follow_hint(url, job_id), file=sys.stderr)
        return 130
    if result.succeeded:
        print(f"job {job_id} SUCCEEDED", file=sys.stderr)
        return 0
    code = result.exit_code if isinstance(result.exit_code, int) and 0 < result.exit_code < 256 else 1
    # Ray's message repeats the tail of the logs, which were just streamed: keep its first sentence
    message = (result.message or "").splitlines()[0].split(", last available logs")[0] if result.message else ""
    detail = f": {_redact(message, env, secrets)}" if message else ""
    print(f"job {job_id} {result.status} (exit code {code}){detail}", file=sys.stderr)
    return code

