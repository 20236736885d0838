"""The in-kernel latency histogram's bucket scheme, and percentiles from it or from exact values.

Buckets are powers of two, each split into ``SUB`` equal linear sub-buckets, so a bucket is
at most 1/SUB of its lower bound wide (12.5% with SUB = 8). Values below SUB get one bucket
each. The C side (agent/bpf/mace.c, ``bucket()``) computes the same index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SUB_BITS = 3
SUB = 1 << SUB_BITS
BUCKETS = SUB * (64 - SUB_BITS + 1)
"""Enough buckets for any u64 nanosecond value."""


def index(value: int) -> int:
    """The bucket of a value (mirror of the C ``bucket()``)."""
    if value < SUB:
        return value
    msb = value.bit_length() - 1
    return SUB * (msb - SUB_BITS + 1) + ((value >> (msb - SUB_BITS)) & (SUB - 1))


def bounds(bucket: int) -> tuple[int, int]:
    """``[low, high)`` of the values a bucket holds."""
    if bucket < SUB:
        return bucket, bucket + 1
    msb = bucket // SUB + SUB_BITS - 1
    sub = bucket % SUB
    shift = msb - SUB_BITS
    return (SUB + sub) << shift, (SUB + sub + 1) << shift


def _rank(count: int, percent: float) -> int:
    """1-based nearest-rank position of a percentile among ``count`` values."""
    return max(1, math.ceil(percent / 100 * count))


def exact_percentile(sorted_values: Sequence[int], percent: float) -> int:
    """Nearest-rank percentile of sorted values (0 when there are none)."""
    if not sorted_values:
        return 0
    return sorted_values[_rank(len(sorted_values), percent) - 1]


def histogram_percentile(counts: Sequence[int], percent: float, maximum: int) -> int:
    """Percentile estimated from bucket counts: the middle of the bucket holding that rank,
    never above the observed maximum (0 when empty)."""
    total = sum(counts)
    if not total:
        return 0
    rank = _rank(total, percent)
    seen = 0
    for bucket, n in enumerate(counts):
        seen += n
        if seen >= rank:
            low, high = bounds(bucket)
            return min((low + high - 1) // 2, maximum)
    return maximum
