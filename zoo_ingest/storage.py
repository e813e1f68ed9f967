"""Where tables and zoos live: fsspec URLs, S3 settings, and writes that are never seen half done.

Every path is an fsspec URL (`/local/dir`, `file://...`, `s3://bucket/prefix`, `gs://...`). S3 and
S3-compatible stores (MinIO, moto) take their settings the way other S3 tools do, from
`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`; explicit `storage_options` (`endpoint_url`, `region`,
`key`, `secret`, `token`, `anon`) override them. The same settings configure s3fs and pyarrow's
S3FileSystem (which does not read the endpoint variables by itself), so Ray Data reads what we write.

Writes are atomic: a local file is written under a hidden temporary name and renamed; an object store
file is uploaded in one put (or one multipart upload, which becomes visible only when it completes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs

OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "abfs", "az", "adl", "oss", "r2"}
S3_KEYS = ("endpoint_url", "region", "key", "secret", "token", "anon")
_SECRET_KEYS = {"secret", "token", "key"}


class StorageError(OSError):
    """A location cannot be read or written; the message names the URL (never a credential)."""


def protocol_of(url: str) -> str:
    scheme = urlparse(url).scheme if "://" in url else ""
    return scheme or "file"


def s3_settings(overrides: Mapping | None = None) -> dict:
    """Endpoint, region and credentials for S3: the AWS environment variables, then `overrides`."""
    env = os.environ
    out = {
        "endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        "key": env.get("AWS_ACCESS_KEY_ID"),
        "secret": env.get("AWS_SECRET_ACCESS_KEY"),
        "token": env.get("AWS_SESSION_TOKEN"),
        "anon": False,
    }
    for name, value in (overrides or {}).items():
        if name in S3_KEYS and value is not None:
            out[name] = value
    return out


def _s3fs_kwargs(options: Mapping, fail_fast: bool = False) -> dict:
    s3 = s3_settings(options)
    kwargs = {k: v for k, v in options.items() if k not in S3_KEYS}
    if s3["anon"]:
        kwargs["anon"] = True
    for name in ("key", "secret", "token", "endpoint_url"):
        if s3[name]:
            kwargs[name] = s3[name]
    if s3["region"]:
        kwargs.setdefault("client_kwargs", {})["region_name"] = s3["region"]
    if fail_fast:  # probes only: real transfers keep botocore's retries
        kwargs["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 2}}
        kwargs["skip_instance_cache"] = True
    return kwargs


def arrow_s3(options: Mapping | None = None) -> pafs.S3FileSystem:
    """pyarrow's S3FileSystem configured from the same settings as s3fs."""
    s3 = s3_settings(options)
    kwargs = dict(region=s3["region"] or "us-east-1", connect_timeout=10, request_timeout=60)
    if s3["anon"]:
        kwargs["anonymous"] = True
    elif s3["key"]:
        kwargs.update(access_key=s3["key"], secret_key=s3["secret"], session_token=s3["token"])
    endpoint = s3["endpoint_url"]
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc + parsed.path.rstrip("/"), scheme=parsed.scheme)
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Location:
    """A folder given as a URL plus its storage options; picklable (sent to Ray tasks).

    `repr` never shows credentials. Relative names use "/" on every filesystem.
    """

    url: str
    options: Mapping = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = {k: ("***" if k in _SECRET_KEYS else v) for k, v in self.options.items()}
        return f"Location({self.url!r}, {shown})"

    @property
    def protocol(self) -> str:
        return protocol_of(self.url)

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    @property
    def is_object_store(self) -> bool:
        return self.protocol in OBJECT_STORES

    def resolved(self) -> Location:
        """This location with the S3 settings of this process's environment made explicit, so that Ray
        tasks on other machines (without those variables) use them too."""
        if self.protocol not in ("s3", "s3a"):
            return self
        explicit = {k: v for k, v in s3_settings(self.options).items() if v}
        return Location(self.url, {**self.options, **explicit})

    def fs_kwargs(self, fail_fast: bool = False) -> dict:
        if self.protocol in ("s3", "s3a"):
            return _s3fs_kwargs(self.options, fail_fast)
        return dict(self.options)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._resolved()[0]

    @property
    def path(self) -> str:
        return self._resolved()[1]

    def _resolved(self):
        cached = self.__dict__.get("_fs_path")
        if cached is None:
            cached = fsspec.core.url_to_fs(self.url, **self.fs_kwargs())
            cached = (cached[0], cached[1].rstrip("/") or cached[1])
            object.__setattr__(self, "_fs_path", cached)
        return cached

    def __getstate__(self):
        return {"url": self.url, "options": dict(self.options)}

    def __setstate__(self, state):
        object.__setattr__(self, "url", state["url"])
        object.__setattr__(self, "options", state["options"])

    # ---- names -------------------------------------------------------------------------------------
    def full(self, rel: str = "") -> str:
        """Filesystem path (no scheme) of `rel` under this folder."""
        return f"{self.path}/{rel}" if rel else self.path

    def url_of(self, rel: str) -> str:
        return f"{self.url.rstrip('/')}/{rel}"

    def child(self, rel: str) -> Location:
        return Location(self.url_of(rel), self.options)

    def arrow(self) -> tuple[pafs.FileSystem, str]:
        """(pyarrow filesystem, root path) for readers that take a pyarrow filesystem."""
        if self.protocol in ("s3", "s3a"):
            return arrow_s3(self.options), self.path
        if self.is_local:
            return pafs.LocalFileSystem(), self.path
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs)), self.path

    # ---- reads ---------------------------------------------------------------------------------------
    def exists(self, rel: str = "") -> bool:
        return self.fs.exists(self.full(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.full(rel))

    def glob(self, pattern: str) -> list[str]:
        """Relative names matching `pattern` (sorted)."""
        base = self.path.rstrip("/") + "/"
        found = self.fs.glob(base + pattern)
        return sorted(p[len(base) :] if p.startswith(base) else p for p in found)

    # ---- atomic writes ---------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write `data` to `rel` so that readers see the old file or the new one, never a part."""
        with self.spool(rel) as local:
            with open(local, "wb") as f:
                f.write(data)

    @contextlib.contextmanager
    def spool(self, rel: str) -> Iterator[str]:
        """Yield a local path to write; on success it is published at `rel` atomically, else dropped."""
        final = self.full(rel)
        if self.is_local:
            folder, name = os.path.split(final)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
            try:
                yield tmp
                os.replace(tmp, final)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        tmpdir = tempfile.mkdtemp(prefix="metazoo-spool-")
        try:
            local = os.path.join(tmpdir, os.path.basename(final))
            yield local
            self._publish(local, final)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def _publish(self, local: str, final: str) -> None:
        fs = self.fs
        if self.is_object_store:
            fs.put_file(local, final)  # one put / multipart upload: visible only when complete
            return
        folder, name = final.rsplit("/", 1)
        tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
        fs.makedirs(folder, exist_ok=True)
        fs.put_file(local, tmp)
        fs.mv(tmp, final)

    def delete(self, rels: list[str]) -> None:
        """Delete files (one bulk request on object stores); missing ones are ignored."""
        paths = [self.full(rel) for rel in rels]
        if not paths:
            return
        try:
            self.fs.rm(paths)
        except FileNotFoundError:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)

    def delete_tree(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.full(rel), recursive=True)

    def check_writable(self) -> None:
        """Fail fast, naming the URL, when the folder cannot be created or written."""
        try:
            fs, path = fsspec.core.url_to_fs(self.url, **self.fs_kwargs(fail_fast=True))
            probe = f"{path.rstrip('/')}/_probe-{uuid.uuid4().hex[:12]}"
            if self.is_local:
                os.makedirs(path, exist_ok=True)
                with open(probe, "wb") as f:
                    f.write(b"probe")
                os.unlink(probe)
            else:
                if not self.is_object_store:
                    fs.makedirs(path, exist_ok=True)
                fs.pipe_file(probe, b"probe")
                fs.rm_file(probe)
        except NotImplementedError as exc:
            raise StorageError(f"destination {self.url} is read-only (its filesystem cannot write)") from exc
        except PermissionError as exc:
            raise StorageError(f"destination {self.url} is not writable: permission denied") from exc
        except Exception as exc:  # botocore, aiohttp and OS errors all mean "cannot write here"
            if getattr(exc, "status", None) in (401, 403, 405, 501):
                raise StorageError(
                    f"destination {self.url} is read-only: the server refuses writes ({type(exc).__name__}: {exc})"
                ) from exc
            raise StorageError(
                f"destination {self.url} is unreachable or not writable: {type(exc).__name__}: {exc}"
            ) from exc
