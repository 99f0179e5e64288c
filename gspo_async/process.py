"""Per-process setup shared by every role: threads, offline hub, quiet libraries, signal handling."""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable, Optional


def rss_mb(pid: int) -> Optional[float]:
    """Resident memory of process `pid` in MiB (Linux /proc), or None if it cannot be read (gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def setup_process(threads: int = 1) -> None:
    """One torch thread per process by default: learner and actors share the cores (3x faster on 2 cores)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    torch.set_num_threads(threads)


class StopFlag:
    """Graceful stop on the first SIGTERM/SIGINT; a second SIGINT exits at once (exit code 130)."""

    def __init__(self, on_first: Optional[Callable[[str], None]] = None):
        self.event = threading.Event()
        self.reason: Optional[str] = None
        self._on_first = on_first
        self._interrupts = 0

    def install(self) -> "StopFlag":
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts >= 2:
                os._exit(130)
        if not self.event.is_set():
            self.reason = signal.Signals(signum).name
            self.event.set()
            if self._on_first:
                self._on_first(self.reason)

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout)
