"""Seconds per phase of a round, for the time breakdowns in rounds.jsonl and benchmarks."""

from __future__ import annotations

import time


class Laps:
    """A stopwatch whose laps name the phase that just ended."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Close `phase`: the time since the previous lap (or since the stopwatch started)."""
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now
