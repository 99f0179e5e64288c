"""Per-process setup shared by every role: threads, offline hub, quiet libraries, logging, signal handling."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Callable, NoReturn, Optional

LOG_LEVEL_ENV = "GSPO_LOG_LEVEL"


class StartupError(RuntimeError):
    """A user mistake found while a role starts (a port in use, a missing run directory, a launcher that does not
    fit the config): the command line prints its message as one line, without a traceback, and exits 2."""


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


class _TagFormatter(logging.Formatter):
    """The console format: the message as is when it names its role (``[learner] step ...``), else with the
    process's role tag in front, so library warnings read like the role's own lines."""

    def __init__(self, tag: str):
        super().__init__("%(message)s")
        self.tag = f"[{tag}] "

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if text.startswith("[") else self.tag + text


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


class _ConsoleHandler(logging.StreamHandler):
    """A stream handler bound to the name of a standard stream: it writes to whatever ``sys.stdout`` or
    ``sys.stderr`` is when the record is emitted, so a stream replaced after setup (a redirect, a test's capture
    that has since closed) never makes logging fail."""

    def __init__(self, stream_name: str):
        super().__init__()
        self._stream_name = stream_name

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one; the name decides instead
        pass


def setup_logging(tag: str, level: Optional[str] = None) -> None:
    """Console logging for this process's ``gspo_async`` loggers: INFO and DEBUG lines to stdout, warnings and
    errors to stderr, each as ``[tag] message`` (or the message alone when it starts with its own ``[...]``).

    `level` (or the GSPO_LOG_LEVEL environment variable; default INFO) is a logging level name such as DEBUG.
    Calling it again replaces the handlers it installed (one line per record, never two).
    """
    name = (level or os.environ.get(LOG_LEVEL_ENV) or "INFO").upper()
    if not isinstance(logging.getLevelName(name), int):
        raise ValueError(f"{LOG_LEVEL_ENV}={name!r} is not a logging level; use DEBUG, INFO, WARNING or ERROR")
    logger = logging.getLogger("gspo_async")
    for h in [h for h in logger.handlers if getattr(h, "_gspo_console", False)]:
        logger.removeHandler(h)
    out, err = _ConsoleHandler("stdout"), _ConsoleHandler("stderr")
    out.addFilter(_Below(logging.WARNING))
    err.setLevel(logging.WARNING)
    for h in (out, err):
        h.setFormatter(_TagFormatter(tag))
        h._gspo_console = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    logger.setLevel(name)


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


def leave(code: int) -> NoReturn:
    """End a process whose role has returned `code`: flush logs and streams, then exit without interpreter
    teardown if this process used torch.distributed, otherwise exit normally.

    Every role closes what it owns before it returns (sockets, weight groups, the learner's process group,
    metric sinks, files), so teardown has nothing left to do but free memory, and there it can kill a run that
    succeeded: a gloo process group still referenced somewhere (DeepSpeed keeps its own references after
    ``destroy_process_group``) is freed during finalisation, its worker thread reaches for the GIL, Python
    ends that thread by unwinding it, and the unwinding through C++ aborts the process ("terminate called
    without an active exception", SIGABRT; torchrun then reports the whole learner failed). Only the command
    line calls this; ``cli.main`` itself returns, so tests can call it in-process.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can be written anyway
            pass
    if "torch.distributed" in sys.modules:
        os._exit(code)
    sys.exit(code)
