"""Real connections inside a network namespace, for tests that read what conntrack made of them
(tests/conntrack_node.py runs this with `ip netns exec NS python3 conntrack_traffic.py …`).

    --serve IP:PORT/PROTO      answer on that address (an endpoint): TCP accepts and answers, UDP echoes
    --connect IP:PORT/PROTO=N  N connections one after the other, each a request and its answer (a new socket and
                               so a new source port each: a new conntrack entry each)
    --ping IP                  one ICMP echo request and its reply (a raw socket)

Prints one JSON object: {"served": {"IP:PORT/PROTO": connections answered there}}. Every connection has been
answered when it returns, so each one is in the namespace's conntrack table (TCP in TIME_WAIT for 120 s).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading
from collections import Counter


def split(text: str) -> tuple[str, int, str]:
    address, _, proto = text.rpartition("/")
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port), proto


def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve(spec: str, served: Counter, ready: threading.Event) -> None:
    host, port, proto = split(spec)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family_of(host), kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    if proto == "tcp":
        sock.listen(128)
    ready.set()
    while True:
        if proto == "tcp":
            conn, _ = sock.accept()
            with conn:
                conn.recv(64)
                served[spec] += 1
                conn.sendall(b"ok")
        else:
            data, peer = sock.recvfrom(64)
            served[spec] += 1
            sock.sendto(data, peer)


def connect(spec: str, n: int) -> None:
    host, port, proto = split(spec)
    for _ in range(n):
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=5) as conn:
                conn.sendall(b"x")
                assert conn.recv(64) == b"ok"
        else:
            with socket.socket(family_of(host), socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                sock.sendto(b"x", (host, port))
                assert sock.recvfrom(64)[0] == b"x"


def ping(host: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(5)
        header = struct.pack("!BBHHH", 8, 0, 0, 0x5d5d, 1)  # echo request, checksum 0 until it is known
        sock.sendto(struct.pack("!BBHHH", 8, 0, _checksum(header), 0x5d5d, 1), (host, 0))
        sock.recvfrom(128)


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of an even number of bytes."""
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="append", default=[])
    parser.add_argument("--connect", action="append", default=[])
    parser.add_argument("--ping", action="append", default=[])
    args = parser.parse_args()
    served: Counter = Counter()
    for spec in args.serve:
        ready = threading.Event()
        threading.Thread(target=serve, args=(spec, served, ready), daemon=True).start()
        ready.wait(5)
    for item in args.connect:
        spec, _, n = item.partition("=")
        connect(spec, int(n or 1))
    for host in args.ping:
        ping(host)
    print(json.dumps({"served": dict(served)}))


if __name__ == "__main__":
    main()
