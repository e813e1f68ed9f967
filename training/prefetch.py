"""A bounded background producer of training batches, one epoch after another (`data.prefetch`).

The step loop used to read, convert and augment each batch itself, and to start each epoch's read
(Ray Data's split coordinator builds a new executor per epoch) only when the previous epoch's
validation and checkpoint were done. `EpochPrefetcher` runs the same per-epoch batch generator in a
thread: it keeps up to `depth` prepared batches ready while the step runs (torch and NumPy release the
GIL in their kernels), and moves on to the next epoch's read as soon as the current epoch's last batch
is prepared, so that read overlaps the end of the epoch, validation and the checkpoint.

The batches are the ones the inline loop would see, in the same order: the producer calls the same
`make_epoch(epoch)` generator, and each epoch's augmentation draws come from that generator's own
`torch.Generator`, used by the producer thread only. An exception in the producer reaches the step loop
(re-raised as `InputPipelineError` naming the epoch and batch); `close()` (or leaving the `with`
block) stops the producer wherever the step loop stopped: on an error, early stopping or the end.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_END = object()  # closes an epoch in the queue


class InputPipelineError(RuntimeError):
    """Preparing a training batch failed in the background producer; the message names epoch and batch."""


class _Failure:
    def __init__(self, epoch: int, batch: int, exc: BaseException):
        self.epoch, self.batch, self.exc = epoch, batch, exc


class EpochPrefetcher:
    """Prepared batches of `epochs` (in order), made by `make_epoch(epoch)` in a background thread.

    `depth` >= 1 bounds the batches held ready (they are not yet consumed); the producer blocks when the
    queue is full. Consume with `for item in prefetcher.epoch(e)`, for each epoch of `epochs` in order.
    """

    def __init__(self, make_epoch: Callable[[int], Iterable[Any]], epochs: Iterable[int], depth: int,
                 name: str = "metazoo-input"):
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self._epochs = list(epochs)
        self._make_epoch = make_epoch
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._next_epoch = 0  # index into self._epochs of the epoch the consumer reads next
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._thread.start()

    # ---- producer thread --------------------------------------------------------------------------
    def _put(self, item) -> bool:
        """Put `item` unless the consumer has closed us; False when closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        for epoch in self._epochs:
            batch = 0
            try:
                batches = iter(self._make_epoch(epoch))
                try:
                    for item in batches:
                        if not self._put(item):
                            return
                        batch += 1
                finally:  # an early stop closes the epoch's generator (and the reader's iterator) here
                    close = getattr(batches, "close", None)
                    if close is not None:
                        close()
            except BaseException as exc:  # handed to the consumer, which re-raises it
                self._put(_Failure(epoch, batch, exc))
                return
            if not self._put(_END):
                return

    # ---- consumer ---------------------------------------------------------------------------------
    def epoch(self, epoch: int) -> Iterator[Any]:
        """The prepared batches of `epoch`, which must be the next epoch of `epochs`."""
        if self._next_epoch >= len(self._epochs) or self._epochs[self._next_epoch] != epoch:
            expected = self._epochs[self._next_epoch] if self._next_epoch < len(self._epochs) else None
            raise ValueError(f"prefetcher: epoch {epoch} asked for, the next one prepared is {expected}")
        self._next_epoch += 1
        while True:
            item = self._get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise InputPipelineError(f"preparing training batch {item.batch} of epoch {item.epoch} failed: "
                                         f"{type(item.exc).__name__}: {item.exc}") from item.exc
            yield item

    def _get(self):
        while True:
            try:
                return self._queue.get(timeout=1.0)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise InputPipelineError("the input producer stopped without finishing the epoch") from None

    def close(self, timeout: float = 30.0) -> None:
        """Stop the producer (it finishes the batch it is preparing) and wait up to `timeout` s for it."""
        self._stop.set()
        while True:  # unblock a producer waiting to put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> EpochPrefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
