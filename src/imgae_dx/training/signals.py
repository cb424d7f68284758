"""Stopping cleanly: SIGINT/SIGTERM ask the loop to save ``last.pt`` and return at the next step.

A second SIGINT while the stream is blocked raises :class:`TrainingInterrupted` (stop without
saving). Handlers are installed only in the main thread and restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

from imgae_dx.errors import UserError

log = logging.getLogger(__name__)


class TrainingInterrupted(UserError):
    """Raised by a second SIGINT while the stream is blocked (the first one stops cleanly)."""


class StopRequest:
    """The pending stop: ``signum`` is None until a signal (or :meth:`request`) arrives."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def request(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum

    @contextlib.contextmanager
    def handlers(self) -> Iterator[None]:
        """Route SIGINT/SIGTERM to :meth:`request` for the duration (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.signum is not None and signum == signal.SIGINT:
                raise TrainingInterrupted("interrupted twice: stopping without saving")
            self.signum = signum
            log.warning("signal %d received: saving last.pt and stopping at the next step", signum)

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
