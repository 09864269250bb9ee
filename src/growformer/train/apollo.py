"""Apollo: low-value-prioritized depth sampling (LVPS), weight sharing and the stage sizes.

While a stage has ``N`` distinct layers of a target of ``M``, each step draws an effective
depth ``L ≥ N`` (LVPS: low values more likely) and runs ``L`` blocks built from the ``N``
distinct ones: effective block ``j`` uses layer ``⌊j·N/L⌋``. Between stages the model expands
by interpolation (new layer ``t`` copies old layer ``⌊t·N_old/N_new⌋``; see
``growformer.expand.interpolate_order``), which is not function-preserving.

LVPS, with ``r = M/N``: ``begin = r + 0.4``, ``end = 0.6``, ``x_min = 1e-6``,
``n = (begin·x_min - end)/(end - begin)``, ``m = end·(n + 1)``; draw ``x ~ U(x_min, 1)``,
``y = m/(x + n)`` clipped to ``[1, r]``, ``L = ⌊y·N⌋``.
"""

from __future__ import annotations

import numpy as np

BEGIN_OFFSET = 0.4
END = 0.6
X_MIN = 1e-6


def _lvps_constants(n_distinct: int, n_max: int) -> tuple[float, float, float]:
    if not 1 <= n_distinct <= n_max:
        raise ValueError(f"need 1 ≤ distinct layers ≤ target layers, got {n_distinct}, {n_max}")
    r = n_max / n_distinct
    begin = r + BEGIN_OFFSET
    n = (begin * X_MIN - END) / (END - begin)
    return r, n, END * (n + 1)


def sample_depth(n_distinct: int, n_max: int, rng: np.random.Generator) -> int:
    """One LVPS draw of the effective depth, in ``[n_distinct, n_max]``."""
    r, n, m = _lvps_constants(n_distinct, n_max)
    x = rng.uniform(X_MIN, 1.0)
    y = min(max(m / (x + n), 1.0), r)
    return min(n_max, int(np.floor(y * n_distinct)))


def depth_probabilities(n_distinct: int, n_max: int) -> dict[int, float]:
    """The exact LVPS distribution of the effective depth: ``{L: P(L)}``, summing to 1.

    ``y`` decreases in ``x``, so ``P(⌊y·N⌋ ≥ k) = P(x ≤ m/(k/N) - n)`` for ``k/N`` in ``(1, r]``.
    """
    r, n, m = _lvps_constants(n_distinct, n_max)

    def at_least(k: int) -> float:
        if k <= n_distinct:
            return 1.0
        if k > r * n_distinct:
            return 0.0
        x_max = m / (k / n_distinct) - n
        return (min(max(x_max, X_MIN), 1.0) - X_MIN) / (1.0 - X_MIN)

    return {k: at_least(k) - at_least(k + 1) for k in range(n_distinct, n_max + 1)}


def sharing_order(n_distinct: int, depth: int) -> list[int]:
    """The layer each of ``depth`` effective blocks uses: ``⌊j·N/L⌋`` (N=3, L=7: 0,0,0,1,1,2,2)."""
    if depth < n_distinct:
        raise ValueError(f"effective depth {depth} is below the {n_distinct} distinct layers")
    return [j * n_distinct // depth for j in range(depth)]


def stage_depths(n_max: int, reference: tuple[int, ...] = (1, 3, 6, 12)) -> list[int]:
    """Apollo's distinct-layer counts (1, 3, 6, 12 for 12 layers) scaled to ``n_max``, without
    repeats."""
    scaled = sorted({max(1, round(k * n_max / reference[-1])) for k in reference})
    return scaled
