"""Token buckets: generous bursts for people typing, a ceiling for scripts.

The hub keeps one per identity (shared by all its connections) and one per client address.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if there are that many; a rate of 0 means unlimited."""
        if self._rate <= 0:
            return True
        tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if tokens < cost:
            self._tokens = tokens
            return False
        self._tokens = tokens - cost
        return True

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled: forgetting it then changes nothing."""
        return self._rate <= 0 or self._tokens + (now - self._stamp) * self._rate >= self._burst
