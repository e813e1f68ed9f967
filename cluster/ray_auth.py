"""Ray token authentication, client side: find the cluster's token the way Ray documents it.

Ray (2.52+) protects the dashboard and the Jobs API with one static bearer token per cluster.
A client finds the token in this order (https://docs.ray.io/en/latest/ray-security/token-auth.html):

1. `RAY_AUTH_TOKEN`: the token itself;
2. `RAY_AUTH_TOKEN_PATH`: a file holding it (set but unreadable or empty is an error, not a fall-through);
3. `~/.ray/auth_token`: the default file (`ray get-auth-token --generate` writes it).

`RAY_AUTH_MODE=disabled` makes Ray's own clients send no token; `RAY_AUTH_MODE=token` makes a missing
token an error before any request. Ray's clients only send the token when `RAY_AUTH_MODE=token` is set
locally; `metazoo submit` sends it whenever one is found, unless the mode is explicitly `disabled`.

The token is a secret: it lives in `AuthToken.value`, which no repr, message or log line shows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

AUTH_MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"

HOW_TO_PROVIDE = (
    "Provide the cluster's token the way Ray reads it: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file "
    "holding it, or put it in ~/.ray/auth_token. On the head node, `ray get-auth-token` prints it; for a "
    "cluster started with `ray up ray_config.yaml`: ray rsync-down ray_config.yaml '~/.ray/auth_token' "
    "~/.ray/metazoo_cluster_token && export RAY_AUTH_TOKEN_PATH=~/.ray/metazoo_cluster_token "
    "(see docs/cluster.md)."
)


class RayAuthError(PermissionError):
    """The cluster wants a token we do not have, or refused the one we sent."""


@dataclass(frozen=True)
class AuthToken:
    """A Ray cluster token and where it came from (`source` is safe to show; `value` never is)."""

    value: str = field(repr=False)
    source: str

    def headers(self) -> dict[str, str]:
        """The HTTP header Ray's own clients send: `Authorization: Bearer <token>`."""
        return {"Authorization": f"Bearer {self.value}"}


def default_token_path() -> Path:
    """`~/.ray/auth_token`, the file `ray get-auth-token --generate` writes."""
    return Path.home() / ".ray" / "auth_token"


def auth_mode(environ: Mapping[str, str] | None = None) -> str:
    """The local `RAY_AUTH_MODE`, lower-cased: "token", "disabled", or "" when unset."""
    environ = os.environ if environ is None else environ
    return environ.get(AUTH_MODE_VAR, "").strip().lower()


def find_token(environ: Mapping[str, str] | None = None) -> AuthToken | None:
    """The token this machine holds for Ray, in Ray's documented order, or None if there is none.

    Raises RayAuthError when RAY_AUTH_TOKEN_PATH names a file that cannot be read or is empty (Ray
    treats that as a misconfiguration too, rather than falling back to the default file).
    """
    environ = os.environ if environ is None else environ
    token = environ.get(TOKEN_VAR, "").strip()
    if token:
        return AuthToken(token, TOKEN_VAR)
    path_text = environ.get(TOKEN_PATH_VAR, "").strip()
    if path_text:
        path = Path(path_text).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise RayAuthError(f"{TOKEN_PATH_VAR} names {path}, which cannot be read ({exc.strerror}). "
                               + HOW_TO_PROVIDE) from None
        if not token:
            raise RayAuthError(f"{TOKEN_PATH_VAR} names {path}, which is empty. " + HOW_TO_PROVIDE)
        return AuthToken(token, f"{TOKEN_PATH_VAR} ({path})")
    path = default_token_path()
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RayAuthError(f"cannot read the Ray token file {path} ({exc.strerror}). " + HOW_TO_PROVIDE) from None
    return AuthToken(token, str(path)) if token else None


def token_for_request(environ: Mapping[str, str] | None = None) -> AuthToken | None:
    """The token to send, honouring RAY_AUTH_MODE.

    `disabled`: send none. `token`: one is required (RayAuthError if none is found). Unset: send the
    token if this machine has one; a cluster that wants one and gets none answers 401, reported by
    `missing_token_error`.
    """
    mode = auth_mode(environ)
    if mode == "disabled":
        return None
    token = find_token(environ)
    if token is None and mode == "token":
        raise RayAuthError("RAY_AUTH_MODE=token is set but no Ray authentication token was found. "
                           + HOW_TO_PROVIDE)
    return token


def missing_token_error(url: str, environ: Mapping[str, str] | None = None) -> RayAuthError:
    """The error for a cluster that answered 401: it wants a token and we sent none."""
    if auth_mode(environ) == "disabled":
        reason = ("RAY_AUTH_MODE=disabled is set in this shell, so no token was sent; unset it so that "
                  "metazoo sends the cluster's token. ")
    else:
        reason = "no Ray authentication token was found on this machine. "
    return RayAuthError(f"the Ray cluster at {url} requires an authentication token, and {reason}"
                        + HOW_TO_PROVIDE)


def rejected_token_error(url: str, token: AuthToken | None) -> RayAuthError:
    """The error for a cluster that answered 403: the token we sent is not this cluster's."""
    source = f"the token from {token.source}" if token else "the token sent"
    return RayAuthError(f"the Ray cluster at {url} rejected {source}: it is not this cluster's token. "
                        + HOW_TO_PROVIDE)
