"""Loopback ports: whether one is taken, and free ones for a server that runs beside others."""
from __future__ import annotations

import socket

from textclf.torchserve.properties import PORT_NAMES


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something listens on the port. SO_REUSEADDR, as the JVM sets it, so that connections of a
    server stopped a moment ago (TIME_WAIT) do not count as in use."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free right now (held together so they are distinct)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_overrides() -> dict[str, int]:
    """A free loopback port for every listener (ServerConfig.ports), for a server next to others."""
    return dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
