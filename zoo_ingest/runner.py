"""Running an ingest's chunks, as Ray tasks or in this process, behind one progress bar.

The bar counts checkpoints as the tasks read, check and write them, batch by batch (a Small CNN Zoo
block of rows, a block of files), not as chunks finish: each task sends its running count to a
small counter actor a few times a second, and the driver polls it while it waits for the tasks.
Ray is started before the bar is drawn, and log records emitted while it is shown (Ray's warnings
among them) are written above it rather than through it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from zoo_ingest.chunk import run_chunk
from zoo_ingest.finalize import IngestError

REPORT_EVERY_S = 0.25  # how often a Ray task sends its count (the driver polls as often)


class ChunkProgress:
    """Rows done per chunk, shown as one bar (`progress=True`), passed to `progress(done, total)`
    when it is a callable, or not shown. The count shown never goes back (a retried chunk restarts
    its own count from 0)."""

    def __init__(self, total: int, progress: bool | Callable[[int, int], None]):
        from tqdm.auto import tqdm

        self.total = total
        self.callback = progress if callable(progress) else None
        # shown in logs too (Ray jobs have no terminal); TQDM_DISABLE=1 or progress=False hide it
        self.bar = tqdm(total=total, unit="ckpt", desc="ingest", disable=not progress or self.callback is not None)
        self.rows: dict[int, int] = {}
        self.final: set[int] = set()
        self.shown = 0

    def set(self, chunk: int, rows: int, final: bool = False) -> None:
        if chunk in self.final:
            return
        self.rows[chunk] = rows
        if final:
            self.final.add(chunk)
        self._refresh()

    def update(self, counts: dict[int, int]) -> None:
        for chunk, rows in counts.items():
            if chunk not in self.final:
                self.rows[chunk] = rows
        self._refresh()

    def _refresh(self) -> None:
        n = max(self.shown, min(self.total, sum(self.rows.values())))
        if n == self.shown:
            return
        self.bar.update(n - self.shown)
        self.shown = n
        if self.callback is not None:
            self.callback(n, self.total)

    def logging_above(self):
        """Log records (the root logger's and Ray's) go above the bar while it is shown."""
        if self.bar.disable:
            return contextlib.nullcontext()
        from tqdm.contrib.logging import logging_redirect_tqdm

        return logging_redirect_tqdm(loggers=[logging.root, logging.getLogger("ray")])

    def close(self) -> None:
        self.bar.close()


class _Send:
    """`report(chunk, rows)` for a Ray task: one fire-and-forget call to the counter actor."""

    def __init__(self, counter):
        self.counter = counter

    def __call__(self, chunk: int, rows: int) -> None:
        self.counter.set.remote(chunk, rows)


def _counter_class():
    import ray

    @ray.remote(num_cpus=0)
    class RowCounter:
        def __init__(self):
            self.rows = {}

        def set(self, chunk: int, rows: int) -> None:
            self.rows[chunk] = rows

        def get(self) -> dict:
            return dict(self.rows)

    return RowCounter


def run_chunks(jobs, by_model_id, use_ray, address, num_cpus, progress, total, hook) -> dict[int, dict]:
    """Run every job; returns {chunk: marker}. Failed chunks are collected and raised together as an
    IngestError once the others are done (their markers let a rerun skip them)."""
    results: dict[int, dict] = {}
    failures: list[str] = []
    if not use_ray:
        bar = ChunkProgress(total, progress)
        try:
            with bar.logging_above():
                for job in jobs:
                    send = lambda chunk, rows, base=bar: base.set(chunk, rows)  # noqa: E731
                    results[job.chunk] = run_chunk(job, by_model_id, hook, send)
                    bar.set(job.chunk, job.inputs.num_rows, final=True)
        finally:
            bar.close()
        return results
    import ray

    from zoo_ingest.ray_runtime import ensure_ray

    ensure_ray(address, num_cpus)  # before the bar: Ray's start-up notices print on their own lines
    bar = ChunkProgress(total, progress)
    counter = _counter_class().remote() if not bar.bar.disable or bar.callback else None
    send = _Send(counter) if counter is not None else None
    try:
        with bar.logging_above():
            task = ray.remote(num_cpus=1, max_retries=3)(run_chunk)
            ref = ray.put(by_model_id) if by_model_id is not None else None
            pending = {task.remote(job, ref, hook, send, REPORT_EVERY_S): job for job in jobs}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=REPORT_EVERY_S)
                for done in ready:
                    job = pending.pop(done)
                    try:
                        results[job.chunk] = ray.get(done)
                    except Exception as exc:  # keep going: finished chunks keep their markers for the rerun
                        failures.append(f"chunk {job.chunk} ({job.inputs['source'][0]} ...): {exc}")
                    bar.set(job.chunk, job.inputs.num_rows, final=True)
                if counter is not None and pending:
                    bar.update(ray.get(counter.get.remote()))
    finally:
        bar.close()
        if counter is not None:
            ray.kill(counter)
    if failures:
        raise IngestError(
            f"{len(failures)} chunk(s) failed; rerun the same command to finish the table.\n" + "\n".join(failures)
        )
    return results
