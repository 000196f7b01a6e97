"""The test harness's port picker: servers handed one port twice fail to bind."""

from __future__ import annotations

from harness.helpers import free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    # the OS gives a port back to a later bind once the socket is closed (136 repeats in
    # 2,000 binds here); a Triton handed the same port for gRPC and HTTP fails to start
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
