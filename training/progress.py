"""Rank 0's progress bar and per-epoch line, shown by the driver.

Training runs in Ray Train worker processes, whose stdout and stderr the console sends to the log file
(cluster.console). Rank 0 therefore does not print: it pushes small events to a `ProgressSink` actor,
and `ProgressRelay`, in the driver, drains them a few times a second into one tqdm bar and one summary
line per epoch:

    epoch 3/8: loss 0.2412  val_kendall_tau 0.4873  1,163 networks/s  data wait 4.9%

Without a relay (a worker loop run on its own) `WorkerProgress` shows the same bar and lines locally.
"""

from __future__ import annotations

import sys
import threading
import time

STEP_EVERY_S = 0.25  # rank 0 sends at most this often between epochs


class ProgressSink:
    """A Ray actor (no CPU reserved) holding events until the driver drains them."""

    def __init__(self):
        self.events: list[dict] = []

    def push(self, event: dict) -> None:
        self.events.append(event)

    def drain(self) -> list[dict]:
        out, self.events = self.events, []
        return out


def epoch_line(event: dict) -> str:
    """The summary line of one epoch from its reported metrics."""
    m = event["metrics"]
    parts = [f"epoch {m['epoch'] + 1}/{event['epochs']}: loss {m['train_loss']:.4f}"]
    parts += [f"{k} {v:.4f}" for k, v in m.items() if k.startswith("val_") and isinstance(v, float)]
    parts.append(f"{m['train_networks_per_s']:,.0f} networks/s")
    parts.append(f"data wait {100 * m['data_wait_fraction']:.1f}%")
    if m.get("skipped_steps"):
        parts.append(f"{m['skipped_steps']} steps skipped (non-finite gradients)")
    return "  ".join(parts)


class _Display:
    """The bar and the epoch lines, wherever they are drawn."""

    def __init__(self, out=None):
        self.out = sys.stdout if out is None else out
        self.bar, self.epochs = None, "?"

    def handle(self, event: dict) -> None:
        from tqdm import tqdm

        kind = event["kind"]
        if kind == "start":
            self.close()
            self.epochs = event.get("epochs", "?")
            if event.get("bar", True):
                self.bar = tqdm(total=event["total"], initial=event["initial"], desc=event["desc"], unit="batch")
        elif kind == "step" and self.bar is not None:
            self.bar.set_postfix(epoch=f"{event['epoch'] + 1}/{self.epochs}", loss=f"{event['loss']:.4f}",
                                 refresh=False)
            self.bar.update(event["n"])
        elif kind == "epoch":
            tqdm.write(epoch_line(event), file=self.out)
        elif kind == "close":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class WorkerProgress:
    """Rank 0's side: a tqdm-like `update`/`set_postfix`/`close`, plus `epoch(metrics)`.

    `sink` is the relay's actor handle (events travel to the driver) or None (drawn here)."""

    def __init__(self, sink, *, total: int, initial: int, desc: str, epochs: int, bar: bool = True):
        self.sink, self.epochs = sink, epochs
        self.local = _Display() if sink is None else None
        self.pending, self.last_sent, self.postfix = 0, time.monotonic(), {"epoch": 0, "loss": float("nan")}
        self._send({"kind": "start", "total": total, "initial": initial, "desc": desc, "bar": bar,
                    "epochs": epochs})

    def _send(self, event: dict, wait: bool = False) -> None:
        if self.local is not None:
            self.local.handle(event)
            return
        ref = self.sink.push.remote(event)  # Ray runs one caller's calls to an actor in order
        if wait:  # an epoch's line and the end: also makes sure the steps before them arrived
            import ray

            ray.get(ref)

    def _flush(self) -> None:
        if self.pending:
            self._send({"kind": "step", "n": self.pending, **self.postfix})
            self.pending, self.last_sent = 0, time.monotonic()

    def update(self, n: int = 1) -> None:
        self.pending += n  # sent with the next set_postfix, epoch or close (the loop calls update first)

    def set_postfix(self, epoch: int, loss: str | float) -> None:
        self.postfix = {"epoch": int(epoch), "loss": float(loss)}
        if time.monotonic() - self.last_sent >= STEP_EVERY_S:
            self._flush()

    def epoch(self, metrics: dict) -> None:
        self._flush()
        self._send({"kind": "epoch", "epochs": self.epochs, "metrics": {
            k: (float(v) if isinstance(v, float) else v) for k, v in metrics.items()}}, wait=True)

    def close(self) -> None:
        self._flush()
        self._send({"kind": "close"}, wait=True)


class ProgressRelay:
    """The driver's side: a `ProgressSink` actor and a thread drawing its events until the block ends.

        relay = ProgressRelay()
        ... train_loop_config={"progress": relay.sink, ...}
        with relay:
            trainer.fit()
    """

    def __init__(self, poll_s: float = 0.2, out=None):
        import ray

        self.sink = ray.remote(num_cpus=0)(ProgressSink).remote()
        self.poll_s, self.display = poll_s, _Display(out)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metazoo-progress", daemon=True)

    def _drain(self) -> None:
        import ray

        for event in ray.get(self.sink.drain.remote()):
            self.display.handle(event)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._drain()
            except Exception:  # the actor is gone (shutdown): nothing more to draw
                return

    def __enter__(self) -> ProgressRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import ray

        self._stop.set()
        self._thread.join()
        try:
            self._drain()  # the last epoch's line
        except Exception:
            pass
        self.display.close()
        ray.kill(self.sink)
