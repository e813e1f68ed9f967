"""Connecting to Ray: a cluster when one is named, otherwise a local Ray started in-process."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray once per process.

    `address` (or the RAY_ADDRESS environment variable) selects an existing cluster; without either,
    a local Ray is started bound to 127.0.0.1
    with at least 4 logical CPUs. Inside a Ray worker or job (already initialised) this
    is a no-op. Unreachable addresses fail within seconds with a message naming the address.
    """
    import ray

    if ray.is_initialized():
        return
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
