"""The HOST:PORT[,HOST:PORT...] list and credentials that Sentinel and Cluster URLs share."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import SplitResult, unquote

Address = tuple[str, int]


class Credentials(NamedTuple):
    username: str | None
    password: str | None


def addresses(parts: SplitResult, what: str) -> list[Address]:
    """The comma-separated addresses after any `user:pass@`; IPv6 in brackets."""
    out: list[Address] = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{what} address {item!r} is not HOST:PORT")
        out.append((host.strip("[]"), int(port)))
    return out


def credentials(parts: SplitResult) -> Credentials:
    return Credentials(unquote(parts.username) if parts.username else None,
                       unquote(parts.password) if parts.password else None)
