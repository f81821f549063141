"""Who is on the other end of a loopback TCP connection: the owner uid of the peer's socket.

The IMDS protocol has no secret, so the endpoint asks the kernel instead. Linux lists every
TCP socket of the network namespace in `/proc/net/tcp` and `/proc/net/tcp6`, each with its
local and remote address and the uid that created it. The peer's socket is the row whose
local address is the connection's remote one and whose remote address is ours.

Addresses are hex in the host's byte order per 32-bit word (`0100007F:1F90` is
127.0.0.1:8080 on little-endian); an IPv6 socket talking IPv4 shows `::ffff:a.b.c.d`, which
compares as the IPv4 address. Rows with inode 0 (TIME_WAIT, orphaned sockets) belong to no
process and never match. Ports are compared as the kernel prints them (`%04X`) before any
address is parsed: a busy host's table costs a string test per row.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Final, Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[IPAddress, int]
ByteOrder = Literal["little", "big"]

#: `/proc/net` is a link to this; with systemd's `ProcSubset=pid` (the units) only this is there.
PROC_NET: Final = Path("/proc/self/net")
TABLES: Final = ("tcp", "tcp6")


def _normal(address: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 addresses as the IPv4 address they carry."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def endpoint(host: str, port: int) -> Endpoint:
    """A socket address (as `getpeername` gives it) in the form the table rows are read into."""
    return _normal(ipaddress.ip_address(host.partition("%")[0])), port


def parse_endpoint(text: str, byteorder: ByteOrder = sys.byteorder) -> Endpoint:
    """`0100007F:1F90` or 32 hex digits and a port; raise ValueError for anything else."""
    address, colon, port = text.partition(":")
    if not colon or len(address) not in (8, 32) or not 1 <= len(port) <= 4:
        raise ValueError("expected HEXADDRESS:HEXPORT")
    words = [bytes.fromhex(address[i : i + 8]) for i in range(0, len(address), 8)]
    if byteorder == "little":
        words = [word[::-1] for word in words]
    raw = b"".join(words)
    ip: IPAddress = ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
    return _normal(ip), int(port, 16)


def owner_uid(
    lines: Iterable[str], peer: Endpoint, ours: Endpoint, byteorder: ByteOrder = sys.byteorder
) -> int | None:
    """The uid of the socket whose local end is `peer` and remote end `ours`, or None.

    `lines` are rows of `/proc/net/tcp` or `tcp6` (a header line and odd rows are skipped).
    """
    peer_port, our_port = f":{peer[1]:04X}", f":{ours[1]:04X}"
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or not fields[0].endswith(":"):
            continue
        if not (fields[1].upper().endswith(peer_port) and fields[2].upper().endswith(our_port)):
            continue
        try:
            local = parse_endpoint(fields[1], byteorder)
            remote = parse_endpoint(fields[2], byteorder)
            uid, inode = int(fields[7]), int(fields[9])
        except ValueError:
            continue
        if local == peer and remote == ours and inode != 0:
            return uid
    return None


def read_owner(peer: Endpoint, ours: Endpoint, proc_net: Path = PROC_NET) -> int | None:
    """Look the peer up in `tcp`, then `tcp6`; None when neither has it (or is readable)."""
    for table in TABLES:
        try:
            with (proc_net / table).open(encoding="ascii", errors="replace") as rows:
                uid = owner_uid(rows, peer, ours)
        except OSError:
            continue
        if uid is not None:
            return uid
    return None
