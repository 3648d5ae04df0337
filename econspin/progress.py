"""Progress of a run for a log rather than a terminal: one plain line every few seconds.

A rich progress bar redraws one line in place, which needs a terminal; where stderr is a
file or a pipe (a batch job, CI, ``nohup``) it shows nothing at all. There a run reports
instead, every ``interval`` seconds, the rounds done, the rate and the time left, each on a
line of its own. ``ECONSPIN_PROGRESS_SECONDS`` sets the interval (default 5; 0: every round).
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

PROGRESS_SECONDS_VARIABLE = "ECONSPIN_PROGRESS_SECONDS"
DEFAULT_PROGRESS_SECONDS = 5.0


def progress_interval(warn: Callable[[str], None]) -> float:
    """Seconds between lines, from the environment; a value that is no number of seconds is named and skipped."""
    text = os.environ.get(PROGRESS_SECONDS_VARIABLE)
    if text is None:
        return DEFAULT_PROGRESS_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (seconds >= 0 and math.isfinite(seconds)):
        default = DEFAULT_PROGRESS_SECONDS
        warn(f"{PROGRESS_SECONDS_VARIABLE}={text!r} is not a number of seconds >= 0; using {default:g}")
        return DEFAULT_PROGRESS_SECONDS
    return seconds


class PlainProgress:
    """Called once per round played; writes a line when ``interval`` seconds have passed since the last."""

    def __init__(
        self,
        total: int,
        description: str,
        write: Callable[[str], None],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.description, self.write, self.interval, self.clock = total, description, write, interval, clock
        self.done = 0
        self.started = self.last = clock()

    def __call__(self, _round: int) -> None:
        self.done += 1
        now = self.clock()
        if now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else math.inf
        left = f", about {(self.total - self.done) / rate:.0f} s left" if math.isfinite(rate) and rate > 0 else ""
        self.write(f"{self.description}: {self.done}/{self.total} rounds, {rate:.3g} rounds/s{left}")
