"""The daemon as an operating-system process: one per site folder, its logs, its exit.

Kept apart from node.daemon.site_daemon (the gossip itself) because none of it matters in tests that
run daemons inside one trio loop, and all of it matters to a supervisor (systemd, a shell).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import trio

from gossipmed.errors import GossipmedError
from gossipmed.storage.files import open_private
from gossipmed.storage.site_lock import site_lock
from node.addresses import address_in_use
from node.daemon.config import DaemonSettings
from node.daemon.exit_record import clear_exit_record, write_exit_record
from node.daemon.site_daemon import SiteDaemon
from node.daemon.systemd import JournaldFormatter, stderr_is_journal
from node.rounds import shown


class DaemonError(GossipmedError):
    """The daemon cannot start (already running, bad state on disk)."""


def check_not_running(settings: DaemonSettings) -> None:
    """Refuse to start a second daemon on the same site folder."""
    from node.daemon.control import DaemonNotRunning, read_control_file

    try:
        info = read_control_file(settings.control_file)
    except DaemonNotRunning:
        return
    pid = info.get("pid")
    if isinstance(pid, int) and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        raise DaemonError(
            f"a daemon (pid {pid}) already runs on {settings.directory}; stop it first"
        )


_HANDLER_NAME = "gossipmed"


def _replace_handler(logger: logging.Logger, handler: logging.Handler) -> None:
    """Idempotent: a second configuration (another command in the same process) replaces the
    first one's handler instead of writing every line twice, or to a stream long closed."""
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(old)
    logger.addHandler(handler)


# libp2p logs every failed dial, every stream a stopping neighbour cut mid-negotiation, and the
# end of a connection a stopping neighbour closed under yamux's reader, at ERROR; for a neighbour
# that is down those are expected, and the round driver reports them once
# (node.round.reachability). Logger -> the whole record's pattern, dropped unless --verbose.
# Yamux itself treats those two errors as the connection's end; the type is matched where yamux
# writes it, so an exception whose text merely contains the name is still logged.
EXPECTED_REDIAL_ERRORS: dict[str, re.Pattern[str]] = {
    "libp2p.transport.tcp.tcp": re.compile(r"Failed to open TCP stream"),
    "libp2p.host.basic_host": re.compile(r"Failed to open stream to peer"),
    "libp2p.stream_muxer.yamux.yamux": re.compile(
        r"Error in handle_incoming for peer \S+: (ClosedResourceError|BrokenResourceError): "
    ),
}


class _ExpectedRedials(logging.Filter):
    """Drops one libp2p logger's expected failure record (shown with --verbose)."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self._pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return self._pattern.match(record.getMessage()) is None


def configure_logging(log_file: Path | None, *, verbose: bool = False) -> None:
    """Log to stderr (or a file); libp2p's logger does not propagate, so attach it too.
    When stderr is systemd's journal stream, lines carry journald's `<priority>` prefix and
    no time stamp (node.daemon.systemd)."""
    handler: logging.Handler = (
        logging.StreamHandler(open_private(log_file, "a"))  # 0600: logs name sites and rounds
        if log_file is not None
        else logging.StreamHandler()
    )
    if log_file is None and stderr_is_journal():
        handler.setFormatter(JournaldFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    _replace_handler(root, handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Importing libp2p clears its logger's handlers (libp2p.utils.logging.setup_logging), which
    # left its warnings to Python's bare last-resort handler: import it before attaching ours.
    import libp2p  # noqa: F401

    libp2p_log = logging.getLogger("libp2p")
    _replace_handler(libp2p_log, handler)
    libp2p_log.setLevel(logging.INFO if verbose else logging.WARNING)
    for name, pattern in EXPECTED_REDIAL_ERRORS.items():
        dial_log = logging.getLogger(name)
        for old in [f for f in dial_log.filters if isinstance(f, _ExpectedRedials)]:
            dial_log.removeFilter(old)
        if not verbose:
            dial_log.addFilter(_ExpectedRedials(pattern))
    logging.getLogger("node.net.libp2p.transport").setLevel(
        logging.INFO if verbose else logging.WARNING
    )


EXIT_OK = 0  # stopped by SIGINT/SIGTERM, or its rounds are done
EXIT_CRASH = 1  # something broke while running: a supervisor should restart it
EXIT_CONFIG = 2  # bad settings, keys, consortium file, checkpoint or ledger: do not restart

log = logging.getLogger("gossipmed.daemon")


def run_daemon(settings: DaemonSettings) -> int:
    """Start and run one site's daemon; its exit code follows the table above. Everything
    that can be wrong with the site's own files raises before the daemon serves (the command
    line turns it into EXIT_CONFIG); nothing a peer sends reaches this far."""
    # the lock comes first: nothing of the site's (ledger, checkpoint) is opened without it
    with site_lock(settings.directory, purpose="starting another daemon on it"):
        check_not_running(settings)
        clear_exit_record(settings.directory)
        try:
            daemon = SiteDaemon(settings)
        except GossipmedError as exc:  # its own files are wrong: fix them, do not restart
            _record_exit(settings, None, EXIT_CONFIG, str(exc))
            raise
        try:
            trio.run(daemon.run)
        except Exception as exc:
            busy = address_in_use(exc)
            if busy is not None:  # a setting to fix, not a crash to restart into
                ports = ", ".join(settings.site.config.listen)
                error = DaemonError(
                    f"a port it must listen on is already in use ({busy}); listen addresses "
                    f"{ports}, control port {settings.daemon.control_port or 'any'}"
                )
                _record_exit(settings, daemon, EXIT_CONFIG, str(error))
                raise error from exc
            log.exception("the daemon crashed; a restart resumes from the last checkpoint")
            _record_exit(settings, daemon, EXIT_CRASH, f"{type(exc).__name__}: {exc}")
            return EXIT_CRASH
        _record_exit(settings, daemon, EXIT_OK, "")
    return EXIT_OK


def _record_exit(
    settings: DaemonSettings, daemon: SiteDaemon | None, code: int, message: str
) -> None:
    state = daemon.state if daemon is not None else None
    last = state.last_record if state is not None else None
    if code == EXIT_CRASH:
        outcome = "crashed"
    elif code == EXIT_CONFIG:
        outcome = "refused"
    else:
        outcome = "stopped" if state is not None and state.phase == "stopping" else "done"
    try:
        write_exit_record(
            settings.directory,
            code=code,
            outcome=outcome,
            last_round=shown(last.round) if last is not None else None,
            completed=state.completed if state is not None else 0,
            message=message,
        )
    except OSError as exc:  # the exit code still tells a supervisor; never mask it
        log.warning("cannot write %s: %s", settings.directory, exc)
