"""The stream policy owns what ``POST /streams`` may add at runtime: RTSP URLs on allowed
schemes and hosts, whose host resolves to addresses the gateway may reach, up to a
number of streams.

``url_pattern`` is the URL part of the policy as one regular expression, published in
the OpenAPI document as the pattern of ``StreamCreate.url``; ``check`` applies exactly
that pattern after the checks that explain a refusal in words, so a URL the document
calls invalid is refused.  Then the host is resolved (off the event loop, bounded by
``resolve_timeout_s``) and ``refusal`` judges every address: loopback, link-local,
private, shared, multicast, reserved and unspecified addresses, IPv4-mapped, NAT64 and
6to4 forms of them included, are refused unless ``allowed_networks`` holds them; the
cloud metadata endpoints (``METADATA``) are refused always.  An allowed host is still
resolved, because a DNS answer can point an allowed name at the gateway's own
neighbours.  The reader resolves the name again when it connects, so a name whose
answer changes in between (DNS rebinding) is a residual risk: see docs/streams.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlsplit

from gateway.config import StreamPolicy
from gateway.errors import StreamRefused
from gateway.ingest.sources import SourceError, SourceKind, parse_source
from gateway.schema import StreamCreate

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Iterable[str]]  # host name -> address strings; blocking, run in a thread

# Cloud metadata services hand out credentials: AWS, GCP, Azure and others (IPv4 and AWS's IPv6),
# and the ECS task metadata endpoint.  Refused even inside allowed_networks.
METADATA: frozenset[Address] = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254")
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the well-known prefix embeds an IPv4 address

_UNRESERVED = r"-A-Za-z0-9._~!$&'()*+,;=%"  # RFC 3986 unreserved, sub-delims and percent-encoding
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_NOTHING = "(?!)"  # no host allowed: a pattern nothing matches


def _literal(text: str) -> str:
    """``text`` as a regular expression that both ECMA-262 (JSON Schema) and Python read alike."""
    return re.sub(r"([.\[\]()*+?{}|^$\\])", r"\\\1", text)


def url_pattern(policy: StreamPolicy) -> str:
    schemes = "|".join(_literal(s) for s in policy.allowed_schemes) or _NOTHING
    hosts = "|".join(_literal(f"[{h}]" if ":" in h else h.lower()) for h in policy.allowed_hosts) or _NOTHING
    return (
        f"^(?:{schemes})://"
        f"(?:[{_UNRESERVED}]+(?::[{_UNRESERVED}]*)?@)?"  # user[:password]@
        f"(?:{hosts})"
        f"(?::{_PORT})?"
        f"(?:/[{_UNRESERVED}:@/]*)?"  # path
        f"(?:\\?[{_UNRESERVED}:@/?]*)?$"  # query
    )


async def check(stream: StreamCreate, policy: StreamPolicy, resolver: Resolver | None = None) -> None:
    """Raise ``StreamRefused`` (400) unless ``stream.url`` is allowed and its host resolves
    only to addresses the policy lets the gateway reach.  ``resolver`` defaults to the
    system's (``getaddrinfo``); tests pass a fake one."""
    host = check_url(stream, policy)
    addresses = await resolve(host, resolver or system_resolver, policy.resolve_timeout_s)
    reason = refusal(addresses, policy.allowed_networks)
    if reason is not None:
        raise StreamRefused(f"host {host!r} resolves to {reason}")


def check_url(stream: StreamCreate, policy: StreamPolicy) -> str:
    """The URL checks, without the network: the host to resolve, or ``StreamRefused``."""
    try:
        spec = parse_source(stream.url)
    except SourceError as e:
        raise StreamRefused(str(e)) from e
    if spec.kind is not SourceKind.RTSP:
        raise StreamRefused("only RTSP URLs can be added at runtime; files and webcams are configured")
    parts = urlsplit(stream.url)
    if parts.scheme.lower() not in policy.allowed_schemes:
        raise StreamRefused(f"scheme {parts.scheme!r} is not allowed (stream_policy.allowed_schemes)")
    if (parts.hostname or "").lower() not in {h.lower() for h in policy.allowed_hosts}:
        raise StreamRefused(f"host {parts.hostname!r} is not allowed (stream_policy.allowed_hosts)")
    if not re.fullmatch(url_pattern(policy), stream.url):
        raise StreamRefused(
            "the URL must be rtsp[s]://[user[:password]@]host[:port][/path][?query] in plain ASCII, "
            "with the scheme and host in lower case"
        )
    return parts.hostname or ""


def system_resolver(host: str) -> list[str]:
    """Every address ``getaddrinfo`` gives for ``host`` (blocking: run it in a thread)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)]


async def resolve(host: str, resolver: Resolver, timeout_s: float) -> list[Address]:
    """``host``'s addresses: a literal as it is, a name through ``resolver`` in a worker thread,
    bounded by ``timeout_s``.  A failure, a timeout or no address at all is ``StreamRefused``.
    A resolver that overruns keeps its thread until ``getaddrinfo`` gives up; only the request
    stops waiting."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass  # a name (or a form such as 127.1 that only getaddrinfo reads)
    try:
        found = await asyncio.wait_for(asyncio.to_thread(lambda: list(resolver(host))), timeout_s)
    except asyncio.TimeoutError:
        raise StreamRefused(
            f"host {host!r} did not resolve within {timeout_s:g} s (stream_policy.resolve_timeout_s)"
        ) from None
    except OSError as e:  # socket.gaierror: no such name, no DNS server
        raise StreamRefused(f"host {host!r} could not be resolved: {e.strerror or e}") from e
    try:
        addresses = [ipaddress.ip_address(a) for a in found]
    except ValueError as e:
        raise StreamRefused(f"host {host!r} resolved to something that is not an address: {e}") from e
    if not addresses:
        raise StreamRefused(f"host {host!r} resolved to no address")
    return addresses


def embedded_ipv4(address: Address) -> Address:
    """The IPv4 address an IPv6 one carries (IPv4-mapped ``::ffff:a.b.c.d``, NAT64's
    ``64:ff9b::/96``, 6to4's ``2002::/16``), which is where a connection ends up; else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def special_use(address: Address) -> str | None:
    """What makes an address other than public unicast, in words, or None when it is public."""
    a = embedded_ipv4(address)
    if a in METADATA:
        return "a cloud metadata endpoint"
    for kind, hit in (
        ("unspecified", a.is_unspecified),
        ("loopback", a.is_loopback),
        ("link-local", a.is_link_local),
        ("multicast", a.is_multicast),
        ("reserved", a.is_reserved),
        ("private", a.is_private),
    ):
        if hit:
            return kind
    return None if a.is_global else "not globally routable"  # shared 100.64/10, documentation ranges


def refusal(addresses: Iterable[Address], allowed_networks: Sequence[Network]) -> str | None:
    """Pure: why one of ``addresses`` may not be reached (the first such), or None when all may.
    Public addresses may; other ones only inside ``allowed_networks`` (an IPv4 address
    carried in IPv6 is judged as the IPv4 address); metadata endpoints never."""
    for address in addresses:
        kind = special_use(address)
        if kind is None:
            continue
        target = embedded_ipv4(address)
        shown = str(address) if target == address else f"{address} (that is {target})"
        if target in METADATA:
            return f"{shown}, {kind}, which is always refused"
        if any(target in net or address in net for net in allowed_networks):
            continue
        return f"{shown}, {kind}, outside stream_policy.allowed_networks"
    return None
