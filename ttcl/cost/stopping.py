"""The stopping rules of `adaptive(...)`: when the votes so far settle the answer (the runtime
reads `settled`) and how many draws that takes on average (the estimator reads
`expected_draws`). One module, so what a program is priced at and what it does cannot drift
apart. Both rules count votes by equivalent answers; a candidate without an answer counts
for nothing.

- `beta`, the stopping rule of Adaptive-Consistency (Aggarwal et al. 2023, *Let's Sample Step
  by Step: Adaptive-Consistency for Efficient Reasoning and Coding with LLMs*, §2): with v1
  votes for the leading answer and v2 for the runner-up, the leader's share of the two,
  p = p1 / (p1 + p2), has the posterior Beta(v1 + 1, v2 + 1) under a uniform prior; stop once
  P(p > 1/2) >= confidence. For integer counts that is a binomial tail (the regularized
  incomplete beta function at integer arguments, I_x(a, b) = P(Binomial(a + b - 1, x) >= a)):

      P(p > 1/2) = sum_{k=0}^{v1} C(m, k) / 2^m,   m = v1 + v2 + 1

  computed here in exact integers, so 4 votes to none (31/32 = 0.969) stop at 0.95 and 3 to
  none (15/16 = 0.9375) do not. The paper reads the rule after every sample; here it is read
  after every round.
- `window`, the rule of Early-Stopping Self-Consistency (Li et al. 2024, *Escape Sky-high
  Cost: Early-stopping Self-Consistency for Multi-step Reasoning*, ESC): the samples are drawn
  in consecutive, non-overlapping windows of `round`; stop after a window whose answers are
  all the same (its answer entropy is zero). Every candidate of the window must state an
  answer. The variant is ESC's own: windows do not overlap, and the answer is then a vote
  over every sample drawn, not only the last window's.
"""

from __future__ import annotations

import functools
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from fractions import Fraction

RULES = ("beta", "window")
# The estimator's prior answer distribution: each draw gives the leading answer with chance
# AGREEMENT and its one rival otherwise (a question the policy answers right 60% of the time,
# the rest split off to one wrong answer: the hardest case for a two-answer vote at that rate).
AGREEMENT = 0.6
NEGLIGIBLE = 1e-9  # the chance of still drawing below which the expected draws stop adding


def lead(keys: Sequence[str | None]) -> tuple[int, int]:
    """Votes for the leading answer and for the runner-up (None, no answer, counts for nothing)."""
    counts = [c for _, c in Counter(k for k in keys if k is not None).most_common(2)]
    return (counts + [0, 0])[0], (counts + [0, 0])[1]


def beta_tail(top: int, second: int) -> Fraction:
    """P(p > 1/2) for p ~ Beta(top + 1, second + 1), exactly: sum_{k<=top} C(m, k) / 2^m."""
    m = top + second + 1
    term = total = 1
    for k in range(1, top + 1):
        term = term * (m - k + 1) // k  # C(m, k) from C(m, k - 1)
        total += term
    return Fraction(total, 2**m)


def settled(rule: str, keys: Sequence[str | None], last: int, confidence: float) -> bool:
    """Whether the answers so far (`keys`, one per candidate, in the order drawn; `last` of them
    the round just drawn) settle the vote under `rule`."""
    if rule == "window":
        window = keys[-last:]
        return bool(window) and window[0] is not None and all(k == window[0] for k in window)
    return beta_tail(*lead(keys)) >= Fraction(confidence)


@functools.cache
def least_lead(votes: int, confidence: float) -> int | None:
    """The fewest votes of `votes` the leader needs for `beta` to stop, between two answers
    (None: not even all of them). The tail grows with the leader's votes, so the first that
    reaches `confidence` is the threshold."""
    m, need = votes + 1, Fraction(confidence) * 2 ** (votes + 1)
    term = total = 1
    for k in range(votes + 1):
        if k:
            term = term * (m - k + 1) // k
            total += term
        if total >= need:
            return k
    return None


def rounds(n: int, size: int) -> list[int]:
    """The sizes of the rounds of `adaptive(n, round=size)`: the last one smaller, never past n."""
    return [size] * (n // size) + ([n % size] if n % size else [])


@functools.cache
def expected_draws(n: int, size: int, rule: str, confidence: float, q: float = AGREEMENT) -> tuple[float, float]:
    """The expected draws and rounds of `adaptive(n, round=size, ...)` when each draw gives
    answer A with chance q and its rival B otherwise:

        E[draws] = sum_k s_k * P(still drawing before round k)

    with s_k the size of round k. The chance of still drawing is tracked exactly over the
    count of A votes (a dynamic programme: a round of s adds j votes to A with the binomial
    chance C(s, j) q^j (1-q)^(s-j)), dropping the paths that stop; for `window` a round stops
    with chance q^s + (1-q)^s whatever came before. It ends once that chance is negligible."""
    alive: dict[int, float] = {0: 1.0}  # A's votes -> the chance of reaching them still drawing
    drawn, draws, rounds_ = 0, 0.0, 0.0
    for s in rounds(n, size):
        mass = sum(alive.values())
        if mass < NEGLIGIBLE:
            break
        draws, rounds_ = draws + mass * s, rounds_ + mass
        drawn += s
        need = least_lead(drawn, confidence) if rule == "beta" else None
        after: dict[int, float] = defaultdict(float)
        for a, p in alive.items():
            for j in range(s + 1):
                chance = p * math.comb(s, j) * q**j * (1 - q) ** (s - j)
                votes = a + j
                if rule == "window":
                    stops = j in (0, s)
                else:
                    stops = need is not None and max(votes, drawn - votes) >= need
                if not stops:
                    after[votes] += chance
        alive = after
    return draws, rounds_
