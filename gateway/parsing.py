"""Strict parsing of text that comes from clients and operators: what ``str.isdigit``
and friends let through would otherwise reach ``int()`` and fail there."""

from __future__ import annotations


def ascii_digits(text: str) -> bool:
    """``0``-``9`` only.  ``str.isdigit`` also accepts ``¹`` or ``٣``, which ``int`` refuses."""
    return bool(text) and text.isascii() and text.isdigit()


def parse_bool(text: str) -> bool | None:
    """``true``/``false`` (also ``1``/``0``, any case), or None for anything else."""
    return {"true": True, "1": True, "false": False, "0": False}.get(text.strip().lower())
