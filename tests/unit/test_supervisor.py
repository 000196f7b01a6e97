"""The launcher's restart budget: backoff that doubles, a cap per window, forgiveness after it."""

from __future__ import annotations

import pytest

from embedded_triton.supervisor import RestartBudget


def test_delays_double_up_to_the_cap_then_the_budget_is_spent() -> None:
    budget = RestartBudget(max_restarts=6, window_s=300, backoff_initial_s=1, backoff_max_s=8)
    delays = [budget.next_delay(float(t)) for t in range(7)]
    assert delays == [1, 2, 4, 8, 8, 8, None], "backoff doubles to the cap; the 7th restart in 300 s is refused"


def test_restarts_older_than_the_window_are_forgiven() -> None:
    budget = RestartBudget(max_restarts=2, window_s=60, backoff_initial_s=1)
    assert budget.next_delay(0) == 1
    assert budget.next_delay(10) == 2
    assert budget.next_delay(20) is None, "a third restart within 60 s"
    # a minute after the first restart, one slot is free again and the backoff shrinks with it
    assert budget.next_delay(61) == 2
    assert budget.next_delay(200) == 1, "after a quiet window the backoff starts over"


def test_zero_restarts_means_never() -> None:
    assert RestartBudget(max_restarts=0).next_delay(0) is None


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        RestartBudget(window_s=0)
