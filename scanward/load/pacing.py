"""How closely a load kept to the start rate it was asked for (``--rate``): each start's
lag behind its schedule, and what the report says when the system could not keep up.
Pure functions; :func:`scanward.load.runner.drive` records the starts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Starts:
    """The starts of one :func:`~scanward.load.runner.drive`: seconds after it began."""

    rate: float | None  # asked for, per second (None: as fast as slots free up)
    max_concurrent: int
    duration: float | None = None  # --duration: starts due in it, as many as kept to
    at: list[float] = field(default_factory=list)

    def lags(self) -> list[float]:
        """Each start's delay behind its schedule (start i is due at i / rate)."""
        if not self.rate:
            return []
        return [max(0.0, t - i / self.rate) for i, t in enumerate(self.at)]

    def achieved(self) -> float | None:
        """Starts per second over the starting window: as many intervals as starts, so a
        load that kept its schedule achieved exactly the rate asked."""
        if not self.at or not self.rate:
            return None
        window = self.at[-1] + 1 / self.rate
        return len(self.at) / window


def summary(starts: Starts) -> dict[str, Any] | None:
    """The report's ``pacing`` (None without ``--rate``): rate asked and achieved, and
    how many starts were a whole interval or more behind their schedule, by how much."""
    if not starts.rate:
        return None
    lags = starts.lags()
    late = [lag for lag in lags if lag >= 1 / starts.rate]
    achieved = starts.achieved()
    due = (math.ceil(starts.duration * starts.rate - 1e-9) if starts.duration is not None
           else len(starts.at))
    return {"rate_asked": round(starts.rate, 3),
            "rate_achieved": None if achieved is None else round(achieved, 2),
            "starts": len(starts.at), "due_starts": max(due, len(starts.at)),
            "late_starts": len(late),
            "max_lag_s": round(max(lags, default=0.0), 3),
            "max_concurrent": starts.max_concurrent}


def note(pacing: dict[str, Any] | None) -> str | None:
    """A line for the report when the rate asked was not kept (a start an interval or
    more late): the figures then measure what the system did, not that rate."""
    if not pacing:
        return None
    missed = pacing["due_starts"] - pacing["starts"]
    if not pacing["late_starts"] and not missed:
        return None
    started = (f"{pacing['starts']} of the {pacing['due_starts']} starts due were made"
               if missed else f"{pacing['starts']} scans started")
    late = (f"; {pacing['late_starts']} started late (up to {pacing['max_lag_s']:g} s)"
            if pacing["late_starts"] else "")
    return (f"--rate {pacing['rate_asked']:g}/s was not kept: {started}, at "
            f"{pacing['rate_achieved']:g}/s{late}, waiting for one of --max-concurrent "
            f"{pacing['max_concurrent']} slots: the system did not keep up at that "
            "concurrency (raise --max-concurrent, or lower --rate)")
