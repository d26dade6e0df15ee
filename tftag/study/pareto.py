"""Accuracy/cost Pareto fronts: which points are on the front, their ranks, the cheapest point
within a tolerance of the best, and the 2-D hypervolume.

A point is ``(cost, score)``: lower cost is better, higher score is better. ``a`` dominates
``b`` when it is no costlier and no worse and strictly better in one of the two; the front is
the set of points no other point dominates (equal points are all on it). Plain Python, no
NumPy: :mod:`tftag.search.how_low` uses it for its front, its oracle (:mod:`tftag.search.tuner`) to promote
candidates, and ``benchmarks/how_low.py`` to compare fronts.
"""

from __future__ import annotations

import math
from typing import Sequence

Point = tuple[float, float]  # (cost, score)
ROUNDING = 1e-12  # slack of cheapest_within: 0.80 - 0.10 is 0.7000000000000001 in floats


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` is no costlier and no worse than ``b`` and strictly better in one."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def _check(points: Sequence[Point]) -> list[Point]:
    out = [(float(c), float(s)) for c, s in points]
    for c, s in out:
        if not (math.isfinite(c) and math.isfinite(s)):
            raise ValueError(f"a point of a front needs a finite cost and score, got ({c}, {s})")
    return out


def on_front(points: Sequence[Point]) -> list[bool]:
    """For each point, whether no other point dominates it."""
    pts = _check(points)
    return [not any(dominates(q, p) for q in pts) for p in pts]


def ranks(points: Sequence[Point]) -> list[int]:
    """Non-dominated sorting: 0 for the front, 1 for the front of the rest, and so on."""
    pts = _check(points)
    rank = [-1] * len(pts)
    left = set(range(len(pts)))
    level = 0
    while left:
        layer = {i for i in left if not any(dominates(pts[j], pts[i]) for j in left)}
        for i in layer:
            rank[i] = level
        left -= layer
        level += 1
    return rank


def cheapest_within(points: Sequence[Point], tolerance: float) -> int:
    """Index of the cheapest point whose score is at least the best score minus ``tolerance``
    (ties: the higher score, then the lower index). It is always on the front. A point exactly
    ``tolerance`` below the best counts (1e-12 of slack absorbs the rounding of the difference).

    Raises:
      ValueError: no points, or a negative tolerance.
    """
    pts = _check(points)
    if not pts:
        raise ValueError("no points to choose from")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    floor = max(s for _, s in pts) - tolerance - ROUNDING
    eligible = [i for i, (_, s) in enumerate(pts) if s >= floor]
    return min(eligible, key=lambda i: (pts[i][0], -pts[i][1], i))


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` = (worst cost, worst score):
    the union of the rectangles [cost, ref_cost] × [ref_score, score]. Points costlier than the
    reference or scoring below it add nothing."""
    ref_cost, ref_score = float(reference[0]), float(reference[1])
    pts = sorted((c, s) for c, s in _check(points) if c < ref_cost and s > ref_score)
    area, best = 0.0, ref_score
    for i, (c, s) in enumerate(pts):  # by cost: each point adds its strip above the best so far
        best = max(best, s)
        right = pts[i + 1][0] if i + 1 < len(pts) else ref_cost
        area += (right - c) * (best - ref_score)
    return area
