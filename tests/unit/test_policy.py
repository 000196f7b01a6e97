"""The runtime stream policy without a network: URL checks, and the resolved addresses
judged through a fake resolver (every special-use range, IPv6, mapped forms, failures)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable

import pytest

from gateway.config import StreamPolicy
from gateway.errors import StreamRefused
from gateway.schema import StreamCreate
from gateway.streams import policy
from gateway.streams.policy import Address, check, refusal, special_use

LAN = StreamPolicy(allowed_hosts=("cam.lan",))


def addr(text: str) -> Address:
    return ipaddress.ip_address(text)


def answers(*addresses: str) -> policy.Resolver:
    """A fake resolver: every name resolves to ``addresses``."""
    return lambda host: list(addresses)


def run_check(url: str, p: StreamPolicy, resolver: policy.Resolver | None = None) -> None:
    asyncio.run(check(StreamCreate(id="cam", url=url), p, resolver))


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.20", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT (shared address space)
        ("169.254.169.254", "a cloud metadata endpoint"),
        ("169.254.170.2", "a cloud metadata endpoint"),
        ("fd00:ec2::254", "a cloud metadata endpoint"),
    ],
)
def test_each_special_use_range_is_named(address: str, kind: str) -> None:
    assert special_use(addr(address)) == kind
    reason = refusal([addr(address)], ())
    assert reason is not None and address in reason, f"{address} must be refused without allowed_networks"


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.215.14", "2606:4700:4700::1111", "2001:4860:4860::8888"])
def test_public_addresses_are_reachable(address: str) -> None:
    assert special_use(addr(address)) is None and refusal([addr(address)], ()) is None


@pytest.mark.parametrize(
    ("address", "carried"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::ffff:10.0.0.5", "10.0.0.5"),
        ("::ffff:169.254.169.254", "169.254.169.254"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),  # NAT64
        ("2002:7f00:1::1", "127.0.0.1"),  # 6to4
    ],
)
def test_ipv4_carried_in_ipv6_is_judged_as_the_ipv4_address(address: str, carried: str) -> None:
    reason = refusal([addr(address)], ())
    assert reason is not None and f"(that is {carried})" in reason, reason
    assert special_use(addr(address)) == special_use(addr(carried))
    assert refusal([addr("::ffff:8.8.8.8")], ()) is None, "a mapped public address is public"


def test_allowed_networks_let_private_ranges_through() -> None:
    lan = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00:1::/64"))
    assert refusal([addr("10.20.30.40"), addr("fd00:1::7")], lan) is None
    assert refusal([addr("::ffff:10.1.1.1")], lan) is None, "a mapped address is judged by its IPv4 address"
    reason = refusal([addr("10.0.0.1"), addr("192.168.0.1")], lan)
    assert reason is not None and "192.168.0.1" in reason, "one address outside the networks refuses the host"
    assert refusal([addr("127.0.0.1")], lan) is not None, "allowing the LAN does not allow loopback"


def test_metadata_endpoints_are_refused_even_inside_allowed_networks() -> None:
    everything = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    wide = (*everything, ipaddress.ip_network("169.254.169.254/32"))
    for address in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "::ffff:169.254.169.254"):
        reason = refusal([addr(address)], wide)
        assert reason is not None and "always refused" in reason, f"{address}: {reason}"
    assert refusal([addr("169.254.1.1")], everything) is None, "other link-local addresses can be allowed"


def test_a_name_is_refused_when_any_of_its_addresses_is() -> None:
    # given a name with a public and a private address (DNS round robin, or a planted record)
    with pytest.raises(StreamRefused, match=r"'cam\.lan' resolves to 10\.0\.0\.9, private"):
        run_check("rtsp://cam.lan/live", LAN, answers("203.0.114.1", "10.0.0.9"))
    run_check("rtsp://cam.lan/live", LAN, answers("8.8.4.4", "2001:4860:4860::8844"))  # public: accepted


def test_loopback_is_refused_even_when_allowed_hosts_lists_it() -> None:
    p = StreamPolicy(allowed_hosts=("127.0.0.1", "::1", "localhost"))
    for url in ("rtsp://127.0.0.1:8554/cam", "rtsp://[::1]/cam"):
        with pytest.raises(StreamRefused, match=r"loopback, outside stream_policy\.allowed_networks"):
            run_check(url, p, answers())  # literals are not resolved: the fake has nothing to say
    with pytest.raises(StreamRefused, match="loopback"):
        run_check("rtsp://localhost/cam", p, answers("127.0.0.1", "::1"))
    # and allowed_networks is what lets it through
    run_check(
        "rtsp://127.0.0.1:8554/cam", p.model_copy(update={"allowed_networks": (ipaddress.ip_network("127.0.0.0/8"),)})
    )


def test_resolution_failure_is_a_clear_refusal() -> None:
    def nxdomain(host: str) -> Iterable[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(StreamRefused, match=r"'cam\.lan' could not be resolved: Name or service not known"):
        run_check("rtsp://cam.lan/live", LAN, nxdomain)
    with pytest.raises(StreamRefused, match="resolved to no address"):
        run_check("rtsp://cam.lan/live", LAN, answers())
    with pytest.raises(StreamRefused, match="not an address"):
        run_check("rtsp://cam.lan/live", LAN, answers("cam.lan"))


def test_a_slow_resolver_is_cut_off_at_the_timeout() -> None:
    def slow(host: str) -> Iterable[str]:
        time.sleep(2)
        return ["8.8.8.8"]

    async def refused_after() -> float:
        t0 = time.monotonic()
        with pytest.raises(StreamRefused, match=r"did not resolve within 0\.2 s \(stream_policy\.resolve_timeout_s\)"):
            await check(StreamCreate(id="cam", url="rtsp://cam.lan/live"), p, slow)
        return time.monotonic() - t0

    p = LAN.model_copy(update={"resolve_timeout_s": 0.2})
    waited = asyncio.run(refused_after())  # (asyncio.run then waits for the sleeping thread to finish)
    assert 0.15 < waited < 1.0, f"the request waited {waited:.2f} s for a 0.2 s timeout"


def test_resolution_runs_off_the_event_loop() -> None:
    # given a resolver that blocks its thread, when the policy resolves, then the loop keeps ticking
    ticks = 0

    def blocking(host: str) -> Iterable[str]:
        time.sleep(0.3)
        return ["8.8.8.8"]

    async def main() -> None:
        nonlocal ticks

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await check(StreamCreate(id="cam", url="rtsp://cam.lan/x"), LAN, blocking)
        task.cancel()

    asyncio.run(main())
    assert ticks >= 10, f"the event loop ran {ticks} ticks while the resolver blocked for 0.3 s"


def test_url_checks_come_before_any_resolution() -> None:
    def never(host: str) -> Iterable[str]:
        raise AssertionError("a URL refused by the host list must not be resolved")

    with pytest.raises(StreamRefused, match="not allowed"):
        run_check("rtsp://elsewhere.example/x", LAN, never)
    with pytest.raises(StreamRefused, match="only RTSP"):
        run_check("/etc/passwd", LAN, never)


def test_system_resolver_reads_literal_forms_getaddrinfo_accepts() -> None:
    # 127.1 is not an address to ipaddress, but getaddrinfo (and FFmpeg) read it as 127.0.0.1
    assert "127.0.0.1" in policy.system_resolver("127.1")
    p = StreamPolicy(allowed_hosts=("127.1",))
    with pytest.raises(StreamRefused, match="loopback"):
        run_check("rtsp://127.1/cam", p)


def test_allowed_networks_are_cidrs_named_in_errors() -> None:
    with pytest.raises(ValueError, match="host bits set"):
        StreamPolicy(allowed_networks=("10.0.0.1/8",))
    p = StreamPolicy(allowed_networks=("10.0.0.0/8", "fc00::/7"))
    assert p.allowed_networks == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fc00::/7"))
