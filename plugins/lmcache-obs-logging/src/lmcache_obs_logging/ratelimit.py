"""A per-key line budget: at most N lines per window, the rest counted.

Logging every event of a busy server would cost more than the work it
describes, so each event type gets a budget of lines per time window. Lines over
budget are not formatted at all; the next line that passes says how many were
suppressed, so the log never hides that something happened.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Window:
    start: float
    used: int = 0
    suppressed: int = 0


class LineRateLimiter:
    """Allows ``limit`` lines per ``window_s`` seconds and key.

    Time comes from the caller (the events' timestamps), so the limiter has no
    clock of its own and tests drive it directly.

    Args:
        limit: Lines allowed per window and key (>= 1).
        window_s: The window length in seconds (> 0).
    """

    def __init__(self, limit: int, window_s: float) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, not {window_s}")
        self.limit = limit
        self.window_s = window_s
        self._windows: dict[str, _Window] = {}

    def admit(self, key: str, now: float) -> int | None:
        """Whether one more line of ``key`` may be logged at ``now``.

        Args:
            key: What the budget is kept for (an event type, usually).
            now: The current time in seconds.

        Returns:
            ``None`` when the line is over budget (it was counted as suppressed),
            otherwise how many lines of ``key`` were suppressed since the last
            admitted one (usually 0).
        """
        window = self._windows.get(key)
        if window is None or now - window.start >= self.window_s or now < window.start:
            carried = window.suppressed if window is not None else 0
            window = _Window(start=now, suppressed=carried)
            self._windows[key] = window
        if window.used >= self.limit:
            window.suppressed += 1
            return None
        window.used += 1
        suppressed, window.suppressed = window.suppressed, 0
        return suppressed

    def suppressed(self) -> dict[str, int]:
        """Lines suppressed and not yet reported, per key."""
        return {k: w.suppressed for k, w in self._windows.items() if w.suppressed}
