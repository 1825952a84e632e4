"""systemd's notify protocol: readiness, status and watchdog pings, one datagram each.

Only active when systemd asks for it (NOTIFY_SOCKET set, WATCHDOG_USEC for the watchdog); a
daemon started by hand sends nothing.
"""

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send `READY=1`, `STATUS=...` and the like; False when not run under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as error:
        log.warning("systemd notify failed socket=%s error=%s", address, error)
        return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd set for this process, or None when there is none."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


async def watchdog(healthy: Callable[[], Awaitable[bool]]) -> None:
    """Ping while the event loop runs and `healthy()` holds; a hung loop or a failing check stops the
    pings and systemd restarts the service."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        if await healthy():
            notify("WATCHDOG=1")
        else:
            log.warning("unhealthy: withholding the systemd watchdog ping")
        await asyncio.sleep(interval)
