"""The split test's statistics: Pearson's chi-square goodness of fit, and how many connections it needs.

No scipy: the survival function of chi-square is the regularized upper incomplete gamma function, computed here
(Numerical Recipes §6.2) and checked against its closed forms in tests/test_watch.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Chi-square's approximation holds when every cell expects at least this many (Cochran's rule).
MIN_EXPECTED_PER_ENDPOINT = 5
# The test is repeated on a growing total at every sample; a strict level keeps false alarms rare over a long watch.
SIGNIFICANCE = 0.001


@dataclass(slots=True)
class GoodnessOfFit:
    """Pearson's chi-square goodness of fit of observed counts against expected shares."""

    statistic: float
    degrees_of_freedom: int
    p_value: float
    observed: list[int]
    expected: list[float]  # counts: total x share


def chi_square_sf(x: float, dof: int) -> float:
    """P(X >= x) for a chi-square variable with ``dof`` degrees of freedom: Q(dof/2, x/2)."""
    if dof <= 0:
        raise ValueError("degrees of freedom must be positive")
    if x <= 0:
        return 1.0
    return regularized_gamma_q(dof / 2.0, x / 2.0)


def regularized_gamma_q(a: float, x: float) -> float:
    """The regularized upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a).

    The series of P for x < a + 1, else the continued fraction of Q (modified Lentz), as in Numerical Recipes §6.2;
    both converge to full double precision well within the iteration limit for the sizes a watch sees.
    """
    if x < 0 or a <= 0:
        raise ValueError("Q(a, x) needs a > 0 and x >= 0")
    if x == 0:
        return 1.0
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        n = a
        for _ in range(10000):
            n += 1
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return min(1.0, math.exp(log_prefix) * h)


def chi_square_test(observed: list[int], shares: list[float]) -> GoodnessOfFit:
    """Test counts against shares (which are normalised here); cells the shares give nothing are left out."""
    total_share = sum(shares)
    n = sum(observed)
    cells = [(o, s / total_share) for o, s in zip(observed, shares) if s > 0] if total_share > 0 else []
    expected = [n * s for _, s in cells]
    statistic = sum((o - e) ** 2 / e for (o, _), e in zip(cells, expected) if e > 0)
    dof = len(cells) - 1
    p = chi_square_sf(statistic, dof) if dof > 0 else 1.0
    return GoodnessOfFit(statistic, dof, p, [o for o, _ in cells], expected)


def connections_needed(shares: list[float]) -> int:
    """How many connections make every endpoint expect MIN_EXPECTED_PER_ENDPOINT."""
    positive = [s for s in shares if s > 0]
    if len(positive) < 2:
        return 0
    total = sum(positive)
    # the kernel keeps probabilities rounded (0.33333333349): do not let that ask for a 16th connection
    return math.ceil(MIN_EXPECTED_PER_ENDPOINT * total / min(positive) - 1e-6)


def format_p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"
