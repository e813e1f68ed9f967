"""Ray Jobs over HTTP: reach a cluster's dashboard, submit a job, follow its logs to the end.

`connect` checks the address and the token with one short request before anything else, so an
unreachable address or a refused token fails in seconds with a message that says what to do, instead
of the Ray client's untimed requests hanging or printing an HTTP trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from cluster.ray_auth import AuthToken, missing_token_error, rejected_token_error, token_for_request

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 15.0
RETRY_FOR_S = 60.0  # how long a busy or restarting head is retried before submit gives up
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Ray's client lets these replace the address it is given; an explicit --address must win.
ADDRESS_OVERRIDES = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")


@dataclass(frozen=True)
class JobResult:
    """How a followed job ended: Ray's status name and, when Ray knows it, the entrypoint's exit code."""

    job_id: str
    status: str
    exit_code: int | None
    message: str | None

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


class DashboardUnreachable(ConnectionError):
    """The dashboard did not answer; `refused` when nothing listened (a head that is still starting)."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


def dashboard_url(address: str) -> str:
    """The dashboard's base URL for an address: `http://host:port`, `https://...`, or `host:port`."""
    address = address.strip().rstrip("/")
    if not address:
        raise ValueError("empty Ray address; pass the head node's dashboard URL, e.g. --address http://127.0.0.1:8265")
    if address.startswith("ray://"):
        raise ValueError(f"{address!r} is a Ray Client address; Ray jobs are submitted to the dashboard "
                         "(port 8265 by default), e.g. --address http://127.0.0.1:8265")
    if "://" not in address:
        address = "http://" + address
    if not address.startswith(("http://", "https://")):
        raise ValueError(f"unsupported Ray address {address!r}: use http://HOST:PORT of the dashboard")
    return address


def _reason(exc: Exception, connect_timeout: float, read_timeout: float) -> str:
    """A short reason for a failed request, without the urllib3 retry trace."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"no answer within {connect_timeout:g} s"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return f"connected, but no reply within {read_timeout:g} s"
    text = str(exc)
    if "Connection aborted" in text:  # e.g. the GCS port, which speaks gRPC
        return "something listens there, but it does not answer HTTP"
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return found.group(1).strip() if found else type(exc).__name__


def check_dashboard(url: str, token: AuthToken | None, *, connect_timeout: float = CONNECT_TIMEOUT_S,
                    read_timeout: float = READ_TIMEOUT_S) -> str:
    """GET `/api/version` with a timeout; return the cluster's Ray version or raise a clear error.

    Raises ConnectionError (unreachable, or not a Ray dashboard) or RayAuthError (401/403).
    """
    import requests

    try:
        reply = requests.get(f"{url}/api/version", headers=token.headers() if token else {},
                             timeout=(connect_timeout, read_timeout))
    except requests.exceptions.RequestException as exc:
        reason = _reason(exc, connect_timeout, read_timeout)
        raise DashboardUnreachable(
            f"cannot reach the Ray dashboard at {url}: {reason}. Check the address: it is the head "
            "node's dashboard (port 8265 by default); for a cluster started with `ray up ray_config.yaml`, "
            "run `ray dashboard ray_config.yaml` and use http://127.0.0.1:8265",
            refused="refused" in reason.lower()) from None
    if reply.status_code == 401:
        raise missing_token_error(url)
    if reply.status_code == 403:
        raise rejected_token_error(url, token)
    try:
        reply.raise_for_status()
        return str(reply.json()["ray_version"])
    except (requests.exceptions.HTTPError, ValueError, KeyError, TypeError):
        raise ConnectionError(f"{url} answered GET /api/version with HTTP {reply.status_code}, not as a Ray "
                              "dashboard; is this the dashboard's port (8265 by default)?") from None


@contextlib.contextmanager
def _without_env(names: tuple[str, ...]) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str, *, token: AuthToken | None = None, use_local_token: bool = True,
            connect_timeout: float = CONNECT_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S,
            ) -> JobSubmissionClient:
    """A JobSubmissionClient for the cluster at `address`, after a quick reachability and token check.

    The token is `token`, else (with `use_local_token`) the one this machine holds for Ray
    (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token; see cluster.ray_auth). It travels as
    `Authorization: Bearer ...`, as Ray's own clients send it.
    """
    url = dashboard_url(address)
    if token is None and use_local_token:
        token = token_for_request()
    version = check_dashboard(url, token, connect_timeout=connect_timeout, read_timeout=read_timeout)
    from ray.job_submission import JobSubmissionClient  # after the check: importing ray takes a while

    _warn_on_version_mismatch(url, version)
    with _without_env(ADDRESS_OVERRIDES):
        return JobSubmissionClient(url, headers=token.headers() if token else None)


def _warn_on_version_mismatch(url: str, cluster_version: str) -> None:
    import ray

    if cluster_version.split(".")[:2] != ray.__version__.split(".")[:2]:
        print(f"warning: the cluster at {url} runs Ray {cluster_version} and this machine Ray {ray.__version__}; "
              "job submission may fail until they match", file=sys.stderr)


def follow(client: JobSubmissionClient, job_id: str, out: IO[str] | None = None,
           poll_s: float = 0.5, settle_timeout_s: float = 60.0) -> JobResult:
    """Stream the job's logs to `out` (stdout) until it ends; return how it ended.

    KeyboardInterrupt propagates: the job keeps running on the cluster.
    """
    out = sys.stdout if out is None else out

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except Exception as exc:  # the stream broke (RuntimeError, aiohttp errors): fall back to polling
        print(f"lost the log stream of job {job_id} ({type(exc).__name__}: {exc}); waiting for it to finish",
              file=sys.stderr)
        return wait(client, job_id, poll_s=poll_s)
    # the stream ends when the job does; its final status follows within moments
    return wait(client, job_id, poll_s=poll_s, timeout_s=settle_timeout_s)


def wait(client: JobSubmissionClient, job_id: str, poll_s: float = 0.5, timeout_s: float | None = None) -> JobResult:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (or `timeout_s` passes: TimeoutError)."""
    import requests

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            info = client.get_job_info(job_id)
        except requests.exceptions.RequestException as exc:
            raise ConnectionError(f"lost contact with the cluster while waiting for job {job_id} "
                                  f"({type(exc).__name__}); it may still be running: "
                                  f"ray job status {job_id}") from None
        status = str(getattr(info.status, "value", info.status))
        if status in TERMINAL:
            return JobResult(job_id, status, info.driver_exit_code, info.message)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {status} after its logs ended; "
                               f"see `ray job status {job_id}`")
        time.sleep(poll_s)


def is_transient(exc: BaseException) -> str | None:
    """Why `exc` is worth retrying (a head asking to be tried again later, or a refused connection),
    or None for an error that retrying cannot fix."""
    import requests

    if isinstance(exc, DashboardUnreachable) and exc.refused:
        return "connection refused"
    if isinstance(exc, requests.exceptions.ConnectionError) and "refused" in str(exc).lower():
        return "connection refused"
    text = str(exc)
    if isinstance(exc, RuntimeError) and "try again later" in text.lower():
        # Ray: "Request failed with status code 500: No available agent to submit job, please try again later."
        return text.split(": ", 1)[-1].rstrip(".") if "status code" in text else text
    return None


def with_retries(action, what: str, retry_for_s: float = RETRY_FOR_S, *, first_delay_s: float = 1.0,
                 max_delay_s: float = 10.0, sleep=time.sleep, clock=time.monotonic, err: IO[str] | None = None):
    """`action()`, retried with exponential backoff while it fails transiently (`is_transient`) and
    `retry_for_s` seconds have not passed; each retry is announced on `err` (stderr). Any other error,
    and the last transient one, propagate at once."""
    err = sys.stderr if err is None else err
    deadline = clock() + retry_for_s
    delay = first_delay_s
    while True:
        try:
            return action()
        except Exception as exc:
            reason = is_transient(exc)
            left = deadline - clock()
            if reason is None or left <= 0:
                raise
            wait_s = min(delay, max_delay_s, left)
            print(f"{what}: {reason}; retrying in {wait_s:.1f} s (giving up {left:.0f} s from now)",
                  file=err, flush=True)
            sleep(wait_s)
            delay *= 2
