"""Who runs a stream: rendezvous (highest-random-weight) hashing over the live gateways.

Every gateway computes the same owner from the same member list, with no coordination.
When a gateway joins or leaves, only the streams whose highest weight moves to or from it
change owner (about 1/N of them), unlike ``hash % N``, which moves almost all of them.
The owner still has to take the stream's lease in Redis before it starts it
(``gateway.cluster.node``): the hash says who should run a stream, the lease says who does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(node: str, stream: str) -> int:
    digest = hashlib.blake2b(f"{node}\x00{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(stream: str, members: Iterable[str]) -> str | None:
    """The member with the highest weight for ``stream`` (ties: the greater node id); None without members."""
    best: tuple[int, str] | None = None
    for node in members:
        key = (weight(node, stream), node)
        if best is None or key > best:
            best = key
    return best[1] if best is not None else None


def assignment(streams: Iterable[str], members: Iterable[str]) -> dict[str, str]:
    nodes = list(members)
    out: dict[str, str] = {}
    for sid in streams:
        node = owner(sid, nodes)
        if node is not None:
            out[sid] = node
    return out
