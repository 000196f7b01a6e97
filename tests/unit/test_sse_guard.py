"""The SSE guard's rule, on TCP counters as Linux reports them: a reader that keeps up is
left alone whatever the rate; one whose window shrinks with what it is sent, or whose
window is shut while our queue grows, is dropped after max_lag_s."""

from __future__ import annotations

from unittest.mock import MagicMock

from gateway.api.sse_guard import TcpProgress, Watched

LAG_S = 8.0
SLACK = 2048


def watched() -> Watched:
    transport = MagicMock()
    transport.get_write_buffer_size.return_value = 0
    return Watched(transport, "cam")


def test_a_reader_that_keeps_up_is_never_dropped() -> None:
    w = watched()
    written = 0
    for t in range(60):
        written += 1200
        # its kernel acknowledged everything; the window lacks only the last event at ACK time
        assert not w.falling_behind(float(t), TcpProgress(written, written, 65536 - 1024), LAG_S, SLACK), t


def test_a_reader_whose_window_shrinks_is_dropped_after_the_lag() -> None:
    w = watched()
    written, window = 0, 65536
    verdicts = []
    for t in range(20):
        written += 1200
        window -= 720  # Linux: ~0.6 of each unread byte
        verdicts.append(w.falling_behind(float(t), TcpProgress(written, written, window), LAG_S, SLACK))
    assert verdicts.index(True) == int(LAG_S), "dropped as soon as it has been behind for max_lag_s"


def test_a_shut_window_with_a_growing_queue_is_dropped() -> None:
    w = watched()
    written = acked = 10_000
    verdicts = []
    for t in range(12):
        written += 1200  # nothing acknowledged any more: our send queue grows
        verdicts.append(w.falling_behind(float(t), TcpProgress(written, acked, 0), LAG_S, SLACK))
    assert any(verdicts) and not any(verdicts[: int(LAG_S)])


def test_an_idle_stream_is_not_a_frozen_reader() -> None:
    w = watched()
    for t in range(30):  # nothing sent: nothing can be left unread
        assert not w.falling_behind(float(t), TcpProgress(5000, 5000, 64000), LAG_S, SLACK)
