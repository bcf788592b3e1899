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


class AddressBuckets:
    """One bucket per client address, shared by its connections and HTTP posts."""

    __slots__ = ("_buckets", "_burst", "_pruned_at", "_rate")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._pruned_at = 0

    def take(self, address: str, now: float, cost: float = 1.0) -> bool:
        """Charge the address's bucket; an unknown address ("") or a rate of 0 is not limited."""
        if self._rate <= 0 or not address:
            return True
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = TokenBucket(self._rate, self._burst, now)
            # Forget refilled buckets whenever the table has doubled: O(1) amortised per frame.
            if len(self._buckets) > 2 * self._pruned_at + 64:
                for key in [key for key, value in self._buckets.items() if value.full(now)]:
                    if key != address:
                        del self._buckets[key]
                self._pruned_at = len(self._buckets)
        return bucket.take(now, cost)
