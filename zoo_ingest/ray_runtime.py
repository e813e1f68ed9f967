"""Connecting to Ray: a cluster when one is named, otherwise a local Ray started in-process."""

from __future__ import annotations

import logging
import os
import re
import time
from functools import partial

log = logging.getLogger(__name__)

# Set (by cluster.console) while a console sends library logs to a file: Ray's output goes there too.
LOG_FILE_ENV = "METAZOO_LOG_FILE"
_WORKER_HANDLER = "metazoo_log_file"
_routed: dict = {}  # log file -> what route_ray_output changed, to undo it


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray once per process.

    `address` (or the RAY_ADDRESS environment variable) selects an existing cluster; without either,
    a local Ray is started bound to 127.0.0.1
    with at least 4 logical CPUs. Inside a Ray worker or job (already initialised) this
    is a no-op. Unreachable addresses fail within seconds with a message naming the address.
    """
    import ray

    log_file = os.environ.get(LOG_FILE_ENV)
    if ray.is_initialized():
        route_ray_output(log_file)
        return
    route_ray_output(log_file)  # ray.init logs (token notice, ...) before it returns
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(
        ignore_reinit_error=True,
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    if address:
        try:
            ray.init(address=address, **kwargs)
            route_ray_output(log_file)
        except (ConnectionError, RuntimeError) as exc:
            raise ConnectionError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc
    else:
        # Ray swaps a loopback --node-ip-address for the machine's interface address unless told it is a
        # single-machine cluster; Ray reads that setting at import, so set both the variable and the
        # constant. Only here: a process joining a multi-node cluster must register its real address.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
        if num_cpus is None:
            # Logical CPUs: training workers reserve theirs, and Ray Data's read tasks need some left over,
            # so a small machine advertises a little more than its cores.
            num_cpus = max(4, (os.cpu_count() or 1) + 2)
        ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    route_ray_output(log_file)


def _is_console(handler: logging.Handler) -> bool:
    import sys

    stream = getattr(handler, "stream", None)
    # Ray's PlainRayHandler subclasses StreamHandler and looks sys.stderr up when it emits
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    return stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__) or \
        type(handler).__name__ == "PlainRayHandler"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _write_worker_lines_any(path: str, dedup: dict, data: dict, ignore_prefix: bool = False) -> None:
    """`ray._private.worker.print_to_stdstream`'s signature, written to the log file instead."""
    _write_worker_lines(path, dedup, data)


def _write_worker_lines(path: str, dedup: dict, data: dict) -> None:
    """One batch of lines that Ray forwards from a worker or actor (log_to_driver), prefixed as Ray does.
    Repeated lines collapse as on Ray's console (`[repeated 12x across cluster]`: Ray Train's placement
    group cleaner polls a State API that a local Ray without a dashboard lacks, once a second); of the
    autoscaler's status reports, only its events are kept."""
    if data.get("pid") == "autoscaler":
        from ray._private.worker import filter_autoscaler_events

        data = dict(data, lines=list(filter_autoscaler_events(data.get("lines", []))))
        batches = [data]
    else:
        batches = dedup["err" if data.get("is_err") else "out"].deduplicate(data)
    _append(path, batches)


def _append(path: str, batches: list[dict]) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(path, "a", encoding="utf-8", errors="replace") as f:
        for data in batches:
            name = data.get("actor_name") or data.get("task_name") or ""
            ip = f", ip={data['ip']}" if data.get("ip") else ""
            prefix = f"({name + ' ' if name else ''}pid={data.get('pid')}{ip})"
            for line in data.get("lines", []):
                f.write(f"{stamp} {prefix} {_ANSI.sub('', line)}\n")


def route_ray_output(log_file: str | None) -> None:
    """Send Ray's console output to `log_file`: what its workers and actors print (forwarded by
    log_to_driver), and the driver-side `ray.*` loggers (Ray Core, Train, Data). `None` undoes it.

    Idempotent; call it again after `import ray.data` or `ray.init`, which install console handlers.
    """
    import ray
    from ray._private import ray_logging
    from ray._private import worker as ray_worker

    if ray.is_initialized() and ray_worker.global_worker.mode != ray_worker.SCRIPT_MODE:
        return  # a Ray worker (which inherits METAZOO_LOG_FILE): its output already reaches the driver
    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    for path in [p for p in _routed if p != log_file]:  # undo an earlier routing to another file
        state = _routed.pop(path)
        dispatcher.remove_handler(_WORKER_HANDLER)
        for d in state["dedup"].values():
            _append(path, d.flush())
        if state.get("printer") is not None:
            ray_worker.print_to_stdstream = state["printer"]
        if state["removed_printer"]:
            dispatcher.add_handler("ray_print_logs", partial(
                ray_worker.print_to_stdstream,
                ignore_prefix=ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)))
        for logger, handlers, added, propagate in state["loggers"]:
            if added is not None:
                logger.removeHandler(added)
                added.close()
            for h in handlers:
                logger.addHandler(h)
            logger.propagate = propagate
    if not log_file:
        return
    state = _routed.setdefault(log_file, {"removed_printer": False, "loggers": [], "file": None, "dedup": {}})
    if ray.is_initialized():
        names = [name for name, _ in dispatcher.handlers]
        if "ray_print_logs" in names:
            dispatcher.remove_handler("ray_print_logs")
            state["removed_printer"] = True
        if _WORKER_HANDLER not in names:
            from ray._private import ray_constants as rc

            state["dedup"] = {k: ray_logging.LogDeduplicator(rc.RAY_DEDUP_LOGS_AGG_WINDOW_S,
                                                            rc.RAY_DEDUP_LOGS_ALLOW_REGEX, rc.RAY_DEDUP_LOGS_SKIP_REGEX)
                              for k in ("out", "err")}
            dispatcher.add_handler(_WORKER_HANDLER, partial(_write_worker_lines, log_file, state["dedup"]))
        if state.get("printer") is None:
            # the raylet's and GCS's warnings (e.g. "N PYTHON worker processes have been started") reach
            # the driver through a thread that calls this module function directly, not the dispatcher
            state["printer"] = ray_worker.print_to_stdstream
            ray_worker.print_to_stdstream = partial(_write_worker_lines_any, log_file, state["dedup"])
        import ray.data  # noqa: F401 - configures the ray.data logger (with a console handler) on import
    if state["file"] is None:
        state["file"] = logging.FileHandler(log_file, encoding="utf-8")
        state["file"].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        state["file"].setLevel(logging.INFO)
    done = {id(entry[0]) for entry in state["loggers"]}
    loggers = [logging.getLogger("ray")] + [
        lg for name, lg in list(logging.Logger.manager.loggerDict.items())
        if name.startswith("ray.") and isinstance(lg, logging.Logger)]
    for logger in loggers:
        console = [h for h in logger.handlers if _is_console(h)]
        for h in console:
            logger.removeHandler(h)
        own = logger.name == "ray" or not logger.propagate  # where records stop climbing: our file there
        if id(logger) in done:
            for entry in state["loggers"]:
                if entry[0] is logger:
                    entry[1].extend(console)
            continue
        if not console and not own:
            continue
        added = state["file"] if own and state["file"] not in logger.handlers else None
        if added is not None:
            logger.addHandler(added)
        state["loggers"].append((logger, console, added, logger.propagate))
