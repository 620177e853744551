"""Exponential back-off for every retry loop of the worker (Kafka connect and resend, exactly-once
transactions, a store that broke under the scorer).

One small stateful helper instead of ``pause = min(pause * 2, cap)`` written by hand in each loop::

    backoff = Backoff(*RETRY_BACKOFF_S)      # constants live with the loop they govern
    while True:
        try:
            return await attempt()
        except RetriableError:
            await asyncio.sleep(backoff.next())

Without jitter the pauses are a pure function of the number of failures since the last
:meth:`Backoff.reset`: ``min(initial * factor**n, cap)``. Jitter (a fraction ``j``) draws each pause
uniformly from ``[(1 - j) * p, p]`` so that many workers restarted together do not retry in step;
it never exceeds the deterministic pause, so ``cap`` stays a true upper bound.
"""
from __future__ import annotations

import random
from collections.abc import Iterator


class Backoff:
    """Pauses between attempts: ``initial``, ``initial * factor``, ... never above ``cap``."""

    def __init__(self, initial: float, cap: float, factor: float = 2.0, jitter: float = 0.0,
                 rng: random.Random | None = None) -> None:
        if not initial > 0:
            raise ValueError(f"back-off initial pause must be > 0, got {initial}")
        if not cap >= initial:
            raise ValueError(f"back-off cap ({cap}) must be >= its initial pause ({initial})")
        if not factor >= 1:
            raise ValueError(f"back-off factor must be >= 1, got {factor}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"back-off jitter must be a fraction in [0, 1], got {jitter}")
        self.initial, self.cap, self.factor, self.jitter = float(initial), float(cap), float(factor), float(jitter)
        self._rng = rng if rng is not None else random.Random()
        self._pause = self.initial
        self.failures = 0  # pauses handed out since the last reset

    def next(self) -> float:
        """The pause to wait now; the one after it grows by ``factor`` up to ``cap``."""
        pause = self._pause
        self._pause = min(self._pause * self.factor, self.cap)
        self.failures += 1
        if self.jitter:
            pause *= 1.0 - self.jitter * self._rng.random()
        return pause

    def reset(self) -> None:
        """After a success: the next failure waits ``initial`` again."""
        self._pause = self.initial
        self.failures = 0

    def __iter__(self) -> Iterator[float]:
        return self

    def __next__(self) -> float:
        return self.next()

    def __repr__(self) -> str:
        return (f"Backoff(initial={self.initial:g}, cap={self.cap:g}, factor={self.factor:g}, "
                f"jitter={self.jitter:g}, failures={self.failures})")


__all__ = ["Backoff"]
