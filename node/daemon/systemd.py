"""Running under systemd: log lines journald reads, readiness and watchdog notifications.

No dependency on python-systemd: the two protocols are small.
- journald: a service's stderr is a stream to the journal when $JOURNAL_STREAM names the
  device and inode of file descriptor 2. journald then reads a `<N>` prefix on each line as
  its syslog priority and adds the time stamp itself, so lines carry no time and multi-line
  records (tracebacks) get the prefix on every line.
- sd_notify: with `Type=notify`, systemd waits for "READY=1" on the datagram socket named by
  $NOTIFY_SOCKET before it calls the unit started; "STOPPING=1" on the way out; "WATCHDOG=1" at
  least every $WATCHDOG_USEC when the unit sets `WatchdogSec=` (a hung event loop then gets
  the daemon restarted). Without those variables every call here does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

import trio

log = logging.getLogger(__name__)

SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def stderr_is_journal(env: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Whether `fd` is the journal stream systemd connected ($JOURNAL_STREAM = "dev:inode")."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def priority(levelno: int) -> int:
    """Syslog priority of a logging level (custom levels round down to the next known one)."""
    for level in sorted(SYSLOG_PRIORITY, reverse=True):
        if levelno >= level:
            return SYSLOG_PRIORITY[level]
    return SYSLOG_PRIORITY[logging.DEBUG]


class JournaldFormatter(logging.Formatter):
    """`<priority>logger: message`, one prefix per line; journald adds the time."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify message; False when not supervised (or the socket is gone)."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address  # '@': abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", message.split("\n", 1)[0], exc)
        return False
    return True


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Half of $WATCHDOG_USEC when it is meant for this process, else None."""
    env = os.environ if env is None else env
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


async def watchdog() -> None:
    """Ping systemd's watchdog from the event loop until cancelled: if the loop hangs, the
    pings stop and systemd restarts the daemon."""
    interval = watchdog_interval_s()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await trio.sleep(interval)
