"""The console of metazoo's long commands (`pipeline`, `train`, `generate`, `benchmark`).

What a person reads: one line per stage, one progress bar per long step, one summary line per epoch
(from rank 0, relayed by the driver: `training.progress`), final tables, and errors in full. What Ray,
DeepSpeed and MLflow log for themselves goes to a log file whose path is printed first:

- driver-side library loggers (`ray.*`, `mlflow`, `alembic`, `deepspeed`, `torch`, ...) lose their
  console handlers and write to the file;
- Python warnings (FutureWarning, DeprecationWarning, ...) raised in this process go to the file
  (`logging.captureWarnings`);
- everything Ray's workers and actors print (Ray Train's controller, the training workers' DeepSpeed
  notices and torch warnings, Ray Data) reaches this process through log_to_driver; `ensure_ray`
  sends it to the file (`zoo_ingest.ray_runtime.route_ray_output`, told by METAZOO_LOG_FILE).

`--verbose`, or METAZOO_LOG_LEVEL=INFO|DEBUG|WARNING, leaves all of it on the console (at that level).

Use:
    with console("pipeline", log_dir_for(cfg.store), verbose=args.verbose):
        ...
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOG_LEVEL_ENV = "METAZOO_LOG_LEVEL"
# Loggers of the libraries whose own logs belong in the file (children included).
LIBRARY_LOGGERS = ("mlflow", "alembic", "deepspeed", "DeepSpeed", "torch", "py.warnings", "urllib3", "filelock",
                   "fsspec", "s3fs", "botocore", "aiobotocore", "matplotlib", "PIL", "numexpr", "asyncio",
                   "httpx", "werkzeug", "git")


def add_console_arguments(parser) -> None:
    """`--verbose` for a command that opens a console."""
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's, DeepSpeed's and MLflow's own logs here instead of in the log file "
                             f"(also: {LOG_LEVEL_ENV}=INFO or DEBUG)")


def _local(folder: str | None) -> bool:
    return bool(folder) and ("://" not in folder or folder.startswith("file://"))


def log_dir_for(folder: str | None) -> Path:
    """Where a command's log file goes: `<folder>/logs` for a local store or run folder, else
    `./.metazoo/logs` (an object store is no place for a file appended to line by line; `console`
    copies it there at the end, see `publish_to`)."""
    if _local(folder):
        return Path(folder.removeprefix("file://")).expanduser() / "logs"
    return Path(".metazoo") / "logs"


def publish_dir_for(folder: str | None) -> str | None:
    """`<folder>/logs` when the store is an object store (a Ray job's working directory is temporary)."""
    return f"{folder.rstrip('/')}/logs" if folder and not _local(folder) else None


def _publish(path: Path, url: str) -> None:
    from zoo_ingest.storage import Location

    try:
        Location(url).write_bytes(path.name, path.read_bytes())
        print(f"log file copied to {url}/{path.name}", file=sys.stderr, flush=True)
    except Exception as exc:  # the run's result must not depend on its log's copy
        print(f"could not copy the log file to {url}: {exc}", file=sys.stderr, flush=True)


def _level(verbose: bool) -> int | None:
    """The library log level for the console, or None for a quiet console."""
    name = os.environ.get(LOG_LEVEL_ENV, "").strip().upper()
    if name:
        level = logging.getLevelName(name)
        if not isinstance(level, int):
            raise ValueError(f"{LOG_LEVEL_ENV}={name!r}: use DEBUG, INFO, WARNING or ERROR")
        return level
    return logging.INFO if verbose else None


def _is_console(handler: logging.Handler) -> bool:
    from zoo_ingest.ray_runtime import _is_console as is_console

    return is_console(handler) or type(handler).__name__ in ("MlflowLoggingHandler",) or (
        type(getattr(handler, "stream", None)).__name__ == "MlflowLoggingStream")


class _Routing:
    """The logger changes of one quiet console, undone on exit."""

    def __init__(self, path: Path):
        self.file = logging.FileHandler(path, encoding="utf-8")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.file.setLevel(logging.INFO)
        self.changes: list[tuple[logging.Logger, list[logging.Handler], bool, bool, int]] = []
        self.env: dict[str, str | None] = {}

    def setenv(self, name: str, value: str) -> None:
        self.env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def apply(self) -> None:
        top = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
        children = [lg for name, lg in list(logging.Logger.manager.loggerDict.items())
                    if isinstance(lg, logging.Logger) and name.split(".")[0] in LIBRARY_LOGGERS
                    and "." in name]
        for logger in top + children:
            console = [h for h in logger.handlers if _is_console(h)]
            for h in console:
                logger.removeHandler(h)
            own = logger in top or not logger.propagate
            added = own and self.file not in logger.handlers
            if added:
                logger.addHandler(self.file)
            self.changes.append((logger, console, added, logger.propagate, logger.level))
            if logger in top:
                logger.propagate = False  # a root handler (logging.basicConfig) must not print them
                if logger.level == logging.NOTSET:  # the file keeps their INFO notices
                    logger.setLevel(logging.INFO)

    def undo(self) -> None:
        for logger, console, added, propagate, level in reversed(self.changes):
            if added:
                logger.removeHandler(self.file)
            for h in console:
                logger.addHandler(h)
            logger.propagate, logger.level = propagate, level
        self.file.close()
        for name, value in self.env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def console(command: str, log_dir: str | Path | None = None, *, verbose: bool = False,
            publish_to: str | None = None) -> Iterator[Path | None]:
    """Open the console of `command`; yields the log file's path (None when verbose). With `publish_to`
    (a folder URL, e.g. `publish_dir_for(store)`), the log file is copied there at the end.

    On an error the exception propagates unchanged (the CLI prints it in full) and the log file's path
    is repeated, since the libraries' view of the failure is there.
    """
    level = _level(verbose)
    if level is not None:  # verbose: libraries keep their console handlers, at this level
        saved = {name: logging.getLogger(name).level for name in ("ray", "mlflow", "deepspeed")}
        for name in saved:
            logging.getLogger(name).setLevel(level)
        try:
            yield None
        finally:
            for name, old in saved.items():
                logging.getLogger(name).setLevel(old)
        return
    folder = Path(log_dir) if log_dir is not None else log_dir_for(None)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log").resolve()
    path.touch()
    print(f"logs of Ray, DeepSpeed and MLflow: {path} (--verbose shows them here)", file=sys.stderr, flush=True)
    routing = _Routing(path)
    from zoo_ingest import ray_runtime

    routing.setenv(ray_runtime.LOG_FILE_ENV, str(path))
    if "mlflow" not in sys.modules:
        routing.setenv("MLFLOW_CONFIGURE_LOGGING", "false")  # its loggers then stay as apply() sets them
    routing.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per model download otherwise
    routing.apply()
    logging.captureWarnings(True)
    ray_routed = False
    try:
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():  # Ray started before this console (tests, a Ray job's driver)
                ray_runtime.route_ray_output(str(path))
                ray_routed = True
        yield path
    except BaseException:
        print(f"metazoo {command}: the libraries' logs of this run are in {path}", file=sys.stderr, flush=True)
        raise
    finally:
        logging.captureWarnings(False)
        if ray_routed or "ray" in sys.modules:
            ray_runtime.route_ray_output(None)
        routing.undo()
        if publish_to:
            _publish(path, publish_to)
