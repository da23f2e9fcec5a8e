"""Loopback ports for the tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nobody listens on (until someone binds it): a connection to it is
    refused at once, or a server started on it gets it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
