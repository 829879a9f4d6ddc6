"""SIGINT and SIGTERM during a sweep: the first stops the Tune run the way Tune's own Ctrl-C handler
does (its loop ends, its trial actors are stopped); a second one, or one outside a Tune run, raises
KeyboardInterrupt. ``Interrupt.signum`` records the first signal for the exit code (128 + signum)."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
from types import FrameType, TracebackType
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Tune stops a run on SIGUSR1 with the handler it installs for SIGINT; without this variable it
# would also take SIGINT over (and then tell nobody that the run was interrupted).
TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"


class _NoTuneResumeAdvice(logging.Filter):
    """Drops Tune's interrupt advice (press Ctrl-C again, ``Tuner.restore``): a sweep resumes by
    running the same command again."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "Tuner.restore" not in text and "Stop signal received" not in text


class Interrupt:
    """Context manager: records the first SIGINT/SIGTERM and swallows the KeyboardInterrupt it
    causes; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signum = 0
        self.saved: dict[int, Any] = {}
        self.tune_handler: Any = None

    def __enter__(self) -> "Interrupt":
        self.saved = {s: signal.getsignal(s) for s in SIGNALS}
        self.arm()
        return self

    def arm(self) -> None:
        """(Re)install the handlers: ``ray.init`` replaces SIGTERM's with one that aborts."""
        for s in SIGNALS:
            signal.signal(s, self._handle)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        for s, handler in self.saved.items():
            signal.signal(s, handler)
        return exc_type is KeyboardInterrupt and bool(self.signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self.signum
        self.signum = self.signum or signum
        if first and callable(self.tune_handler):
            self.tune_handler(signum, frame)
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def tune_run(self) -> Iterator[None]:
        """Around ``Tuner.fit``: Tune leaves SIGINT to us and a signal ends its loop cleanly."""
        if self.signum:
            raise KeyboardInterrupt
        self.arm()
        before_env, before_usr1 = os.environ.get(TUNE_SIGINT_ENV), signal.getsignal(signal.SIGUSR1)
        os.environ[TUNE_SIGINT_ENV] = "1"
        self.tune_handler = _TuneHandler(before_usr1)
        quiet, tune_log = _NoTuneResumeAdvice(), logging.getLogger("ray.tune.tune")
        tune_log.addFilter(quiet)
        try:
            yield
        finally:
            tune_log.removeFilter(quiet)
            self.tune_handler = None
            signal.signal(signal.SIGUSR1, before_usr1)
            if before_env is None:
                os.environ.pop(TUNE_SIGINT_ENV, None)
            else:
                os.environ[TUNE_SIGINT_ENV] = before_env


class _TuneHandler:
    """Calls the SIGUSR1 handler Tune installed for this run (not the one from before it)."""

    def __init__(self, before: Any) -> None:
        self.before = before

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        handler = signal.getsignal(signal.SIGUSR1)
        if handler is self.before or not callable(handler):
            raise KeyboardInterrupt
        handler(signal.SIGUSR1, frame)
