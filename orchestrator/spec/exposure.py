"""What a run opens beyond this machine, as warnings: a dashboard on a non-loopback host, a cluster over the network.

caviar starts everything it can on 127.0.0.1; these are the cases where the user asked otherwise.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` or ``localhost``: reachable from this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def address_host(address: str) -> str | None:
    """The host of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto``/``local`` (whatever this machine runs)."""
    if address in ("auto", "local"):
        return None
    return address.split("://", 1)[-1].rpartition(":")[0] or address.split("://", 1)[-1]


def exposure_warnings(address: str | None, dashboard: bool, dashboard_host: str) -> list[str]:
    """One line per way this run reaches, or is reachable, beyond this machine."""
    out = []
    if address is None and dashboard and not is_loopback(dashboard_host):
        out.append(
            f"setting 'dashboard_host': the Ray dashboard will listen on {dashboard_host}, not only on this "
            "machine: anyone who reaches it can run code here"
        )
    host = address_host(address) if address else None
    if host is not None and not is_loopback(host):
        out.append(
            f"setting 'address': the Ray cluster at {host} is reached over the network: anyone who reaches "
            "its ports can run code on it; keep them behind a firewall or an SSH tunnel"
        )
    return out
