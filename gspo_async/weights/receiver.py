"""A background thread that keeps receiving weight versions and holds on to the newest one.

The engine calls `take()` at its safe points (between generation batches) and applies what it gets;
versions that arrive while the engine is busy replace each other, so only the newest is applied.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable

import torch.distributed as dist

from gspo_async.weights.elastic import ReceivedWeights, WeightSubscriber

log = logging.getLogger(__name__)


class WeightReceiverThread:
    """Runs `subscriber.receive()` in a loop. `on_received` (optional) is called on the receiving thread."""

    def __init__(self, subscriber: WeightSubscriber,
                 on_received: Callable[[ReceivedWeights], None] | None = None):
        self.subscriber = subscriber
        self.on_received = on_received
        self.received = 0  # versions received
        self.error: BaseException | None = None  # set when the loop ended on an error (learner gone)
        self._newest: ReceivedWeights | None = None
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        # Daemon, but stopped at exit: a thread still holding a TCPStore at interpreter exit can abort the process.
        self._thread = threading.Thread(target=self._run, name=f"weights-{subscriber.actor_id}", daemon=True)
        atexit.register(self.stop)

    def start(self) -> "WeightReceiverThread":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while True:
                try:
                    got = self.subscriber.receive()
                except Exception as e:  # noqa: BLE001 - sorted below
                    if isinstance(e, ConnectionError) or (isinstance(e, RuntimeError)
                                                          and not isinstance(e, dist.DistStoreError)):
                        raise  # the learner is gone, or receive() was misused: the loop ends (below)
                    # one unreadable round (its record gone mid-read, a store wait timed out) must not leave the
                    # actor without weights for the rest of the run
                    log.warning("weight receiver for %s: a round failed (%s: %s); waiting for the next",
                                self.subscriber.actor_id, type(e).__name__, e)
                    continue
                if got is None:
                    if self.subscriber.stopped:
                        return
                    continue  # a failed round: wait for the next
                if self.on_received is not None:
                    self.on_received(got)
                with self._lock:
                    self._newest = got
                    self.received += 1
                    self._arrived.notify_all()
        except BaseException as e:  # noqa: BLE001 - recorded for the owner, the thread must end cleanly
            log.warning("weight receiver for %s stopped: %s", self.subscriber.actor_id, e)
            with self._lock:
                self.error = e
                self._arrived.notify_all()

    def take(self) -> ReceivedWeights | None:
        """The newest version not yet taken, or None."""
        with self._lock:
            got, self._newest = self._newest, None
            return got

    def wait(self, timeout_s: float) -> ReceivedWeights | None:
        """Like `take`, but wait up to `timeout_s` seconds for a version to arrive."""
        with self._lock:
            self._arrived.wait_for(lambda: self._newest is not None or self.error is not None, timeout=timeout_s)
            got, self._newest = self._newest, None
            return got

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop receiving, join the thread and release the subscriber's store connections."""
        atexit.unregister(self.stop)
        self.subscriber.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=3 * self.subscriber.timeout_s + 1 if timeout_s is None else timeout_s)
        self.subscriber.close(timeout_s=0 if self._thread.is_alive() else None)
