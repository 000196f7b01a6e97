"""Rendezvous hashing and the cluster settings: pure functions, no servers."""

from __future__ import annotations

import pytest

from gateway.cluster import ownership
from gateway.config import ClusterSettings
from gateway.errors import ConfigError

STREAMS = [f"cam{i:05d}" for i in range(10_000)]


def test_every_gateway_computes_the_same_owner_whatever_the_member_order() -> None:
    members = ["gw-0", "gw-1", "gw-2"]
    a = ownership.assignment(STREAMS[:500], members)
    b = ownership.assignment(STREAMS[:500], list(reversed(members)))
    assert a == b
    assert ownership.owner("x", []) is None


def test_streams_spread_evenly() -> None:
    members = [f"gw-{i}" for i in range(4)]
    counts = dict.fromkeys(members, 0)
    for node in ownership.assignment(STREAMS, members).values():
        counts[node] += 1
    # 10,000 streams over 4 gateways: 2,500 each, within a few standard deviations (~43)
    assert all(abs(c - 2500) < 200 for c in counts.values()), counts


@pytest.mark.parametrize("change", ["join", "leave"])
def test_a_membership_change_moves_only_the_streams_it_must(change: str) -> None:
    members = [f"gw-{i}" for i in range(5)]
    before = ownership.assignment(STREAMS, members)
    after_members = [*members, "gw-5"] if change == "join" else members[:-1]
    after = ownership.assignment(STREAMS, after_members)
    moved = [s for s in STREAMS if before[s] != after[s]]
    if change == "join":  # only streams that go to the newcomer move: about 1/6 of them
        assert {after[s] for s in moved} == {"gw-5"}
        assert 0.12 < len(moved) / len(STREAMS) < 0.21
    else:  # only the leaver's streams move: about 1/5
        assert {before[s] for s in moved} == {"gw-4"}
        assert 0.15 < len(moved) / len(STREAMS) < 0.25


def test_cluster_mode_is_off_without_a_redis_url() -> None:
    assert not ClusterSettings().enabled
    assert ClusterSettings(redis_url="redis://cache:6379/0").enabled


def test_a_bad_redis_url_names_the_field_and_hides_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import load_settings

    monkeypatch.setenv("APP_CLUSTER__REDIS_URL", "http://:s3cret@cache:6379")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "cluster.redis_url" in str(e.value) and "APP_CLUSTER__REDIS_URL" in str(e.value)
    assert "s3cret" not in str(e.value)


def test_the_node_id_defaults_to_the_host_name_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    assert ClusterSettings().node == socket.gethostname()
    assert ClusterSettings(node_id="gw-1").node == "gw-1"
    with pytest.raises(ValueError, match="node_id"):
        ClusterSettings(node_id="has space")


def test_the_event_reader_waits_longer_the_more_streams_it_mirrors() -> None:
    from gateway.cluster.events import READ_LINGER_S, read_linger

    assert read_linger(1) == read_linger(24) == READ_LINGER_S  # a few streams: events within 5 ms
    # many: the reader's CPU stays within its budget (~10% of a core), at the cost of delivery lag
    assert read_linger(1000) == 1000 * 7e-6 / 0.1
    assert read_linger(2000) > read_linger(1000)
