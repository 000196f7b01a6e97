"""The stream policy owns what ``POST /streams`` may add at runtime: RTSP URLs on allowed
schemes and hosts, up to a number of streams.

``url_pattern`` is the policy as one regular expression, published in the OpenAPI
document as the pattern of ``StreamCreate.url``; ``check`` applies exactly that
pattern last, after the checks that explain a refusal in words, so what the
document calls valid is what the gateway accepts.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from gateway.config import StreamPolicy
from gateway.errors import StreamRefused
from gateway.ingest.sources import SourceError, SourceKind, parse_source
from gateway.schema import StreamCreate

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


def check(stream: StreamCreate, policy: StreamPolicy) -> None:
    """Raise ``StreamRefused`` (400) unless ``stream.url`` is allowed."""
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
