"""A cluster of real daemons on one machine: N site folders, one consortium, N processes.

`create_cluster` makes the site folders and the roster with the library functions behind
`gossipmed init` and `gossipmed consortium build` (gossipmed.consortium.setup), and writes
each site's [daemon], [gossip] and learning tables; `start_cluster` starts
`python -m node.cli run --site ...` per site (stdout/stderr to SITE/daemon.log) and records
the pids in DIR/cluster.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossipmed.consortium.member import Member, load_card
from gossipmed.consortium.roster import save_roster
from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.consortium.setup import build_consortium, create_site
from gossipmed.consortium.site import CARD_FILE, SITE_FILE, SiteConfig
from gossipmed.consortium.task import DEFAULT_TASK, TaskDigest, site_task
from gossipmed.errors import ConfigError, GossipmedError
from gossipmed.learn.config import learning_config_from_mapping
from gossipmed.storage.atomic import atomic_write_bytes, atomic_write_json
from gossipmed.storage.files import open_private, private_dir
from gossipmed.toml_writer import toml_document
from node.daemon.config import CONTROL_FILE, LOG_FILE
from node.daemon.control import DaemonNotRunning, fetch_status
from node.daemon.control_client import site_dashboard_url
from node.daemon.exit_record import read_exit_record

CLUSTER_FILE = "cluster.json"
CONSORTIUM_FILE = "consortium.toml"
CLUSTER_VERSION = 1
LOOPBACK = "127.0.0.1"

Sections = Mapping[str, Mapping[str, Any]]


class ClusterError(GossipmedError):
    """A cluster directory is missing, malformed or its daemons misbehave."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the daemon refuses it if taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def site_name(index: int, n: int) -> str:
    return f"site-{index:0{max(2, len(str(n - 1)))}d}"


def site_names(*, nodes: int, names: Sequence[str] | None = None) -> list[str]:
    """The given names (each once), or site-00, site-01, ..."""
    if names is None:
        return [site_name(i, nodes) for i in range(nodes)]
    clashes = sorted({n for n in names if list(names).count(n) > 1})
    if clashes:
        raise ConfigError(f"site names must differ: {', '.join(clashes)} given twice")
    if len(names) != nodes:
        raise ConfigError(f"{len(names)} names for {nodes} nodes")
    return list(names)


def sections_toml(sections: Sections) -> str:
    return "\n" + toml_document(sections)


def init_site(site_dir: Path, *, name: str, listen: Sequence[str]) -> dict[str, Any]:
    """A new site folder (what `gossipmed init` makes); its card as a mapping."""
    card = create_site(site_dir, name=name, listen=listen).to_mapping()
    del card["revoked"]
    return card


def write_site_toml(
    site_dir: Path, *, name: str, listen: Sequence[str], consortium: str, sections: Sections
) -> None:
    config = SiteConfig(name=name, listen=tuple(listen), consortium=consortium)
    text = config.to_toml() + sections_toml(sections)
    atomic_write_bytes(site_dir / SITE_FILE, text.encode("utf-8"))


def default_sections(
    *,
    index: int,
    nodes: int,
    rounds: int,
    round_timeout_s: float,
    dataset: str,
    base_model: str | None,
    steps: int,
) -> dict[str, dict[str, Any]]:
    return {
        "daemon": {"rounds": rounds, "site_index": index, "base_model": base_model or ""},
        "gossip": {"round_timeout_s": round_timeout_s},
        "data": {"dataset": dataset, "n_sites": nodes},
        "train": {"steps_per_round": steps},
    }


def create_cluster(
    directory: Path,
    *,
    nodes: int,
    topology: str,
    degree: int | None = None,
    seed: int = 0,
    host: str = LOOPBACK,
    addresses: Sequence[str] | None = None,
    sections: Callable[[int], Sections],
    settings: ConsortiumSettings | None = None,
    names: Sequence[str] | None = None,
) -> list[Path]:
    """Site folders DIR/NAME (default names site-XX) and DIR/consortium.toml; returns the
    site folders, in the order of `names`.

    `addresses` gives each site its own IP (separate hosts); by default all use `host`
    with a free port each. `sections(i)` gives site i's [daemon]/[gossip]/[data]/...
    tables; `settings` the consortium-wide gossip settings.
    """
    if nodes < 2:
        raise ConfigError("a cluster needs at least 2 nodes")
    if addresses is not None and len(addresses) != nodes:
        raise ConfigError("give one address per node")
    private_dir(directory)
    if (directory / CONSORTIUM_FILE).exists():
        raise ClusterError(f"{directory} already holds a cluster; pick an empty folder")
    sites: list[Path] = []
    cards: list[Member] = []
    for i, name in enumerate(site_names(nodes=nodes, names=names)):
        site_dir = directory / name
        ip = addresses[i] if addresses is not None else host
        port = free_port(host) if addresses is None else 4001
        listen = [f"/ip4/{ip}/tcp/{port}"]
        init_site(site_dir, name=name, listen=listen)
        write_site_toml(
            site_dir,
            name=name,
            listen=listen,
            consortium=f"../{CONSORTIUM_FILE}",
            sections=sections(i),
        )
        sites.append(site_dir)
        cards.append(load_card(site_dir / CARD_FILE))
    settings = settings or ConsortiumSettings()
    if settings.task == DEFAULT_TASK:  # the consortium trains what its sites are set up for
        settings = dataclasses.replace(settings, task=sections_task(sites[0], sections(0)))
    roster = build_consortium(cards, topology=topology, degree=degree, seed=seed, settings=settings)
    save_roster(roster, directory / CONSORTIUM_FILE)
    write_cluster_file(directory, sites=sites, pids={}, topology=topology)
    return sites


def sections_task(site_dir: Path, sections: Sections) -> TaskDigest:
    """The task a site with these tables trains (the default for a synthetic problem)."""
    if sections.get("daemon", {}).get("problem", "lm") != "lm":
        return DEFAULT_TASK
    learning = learning_config_from_mapping(
        {k: v for k, v in sections.items() if k in ("data", "adapter", "dp", "train", "compute")}
    )
    if learning.data.path is not None:
        path = str(site_dir / Path(learning.data.path).expanduser())
        learning = dataclasses.replace(learning, data=dataclasses.replace(learning.data, path=path))
    return site_task(learning)


@dataclass(frozen=True)
class ClusterSite:
    name: str
    directory: Path
    pid: int | None


def write_cluster_file(
    directory: Path, *, sites: Sequence[Path], pids: Mapping[str, int], topology: str
) -> None:
    atomic_write_json(
        directory / CLUSTER_FILE,
        {
            "v": CLUSTER_VERSION,
            "topology": topology,
            "sites": [{"name": s.name, "dir": s.name, "pid": pids.get(s.name)} for s in sites],
        },
    )


def read_cluster(directory: Path) -> tuple[list[ClusterSite], dict[str, Any]]:
    path = directory / CLUSTER_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClusterError(
            f"{path} not found (create a cluster with `gossipmed cluster up`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("v") != CLUSTER_VERSION:
        raise ClusterError(f"{path} has an unknown format")
    sites = [
        ClusterSite(name=s["name"], directory=directory / s["dir"], pid=s.get("pid"))
        for s in doc["sites"]
    ]
    return sites, doc


def daemon_command(site_dir: Path, *, prefix: Sequence[str] = ()) -> list[str]:
    return [*prefix, sys.executable, "-m", "node.cli", "run", "--site", str(site_dir.resolve())]


def start_daemon(site_dir: Path, *, prefix: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """One daemon process, logs to SITE/daemon.log, in its own session (own signals)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    root = Path(__file__).resolve().parents[2]  # the folder holding node/
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    with open_private(site_dir / LOG_FILE, "ab") as logf:
        return subprocess.Popen(
            daemon_command(site_dir, prefix=prefix),
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def start_cluster(directory: Path) -> list[subprocess.Popen[bytes]]:
    sites, doc = read_cluster(directory)
    running = [s.name for s in sites if s.pid is not None and pid_alive(s.pid, s.directory)]
    if running:
        raise ClusterError(f"already running: {', '.join(running)} (`gossipmed cluster down`)")
    procs = [start_daemon(s.directory) for s in sites]
    write_cluster_file(
        directory,
        sites=[s.directory for s in sites],
        pids={s.name: p.pid for s, p in zip(sites, procs, strict=True)},
        topology=str(doc.get("topology", "")),
    )
    return procs


def pid_alive(pid: int, site_dir: Path | None = None) -> bool:
    """True if `pid` runs and (when site_dir is given) is the daemon of that site."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if site_dir is None:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): trust the pid
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False  # zombie: exited, not yet reaped by its parent
    return str(site_dir.resolve()).encode() in cmdline


def stop_cluster(directory: Path, *, timeout: float = 20.0) -> dict[str, str]:
    """SIGTERM every daemon, SIGKILL those still alive after `timeout`; name -> outcome."""
    sites, _doc = read_cluster(directory)
    outcome: dict[str, str] = {}
    alive = {s.name: s for s in sites if s.pid is not None and pid_alive(s.pid, s.directory)}
    for s in sites:
        if s.name not in alive:
            outcome[s.name] = "not running"
    for s in alive.values():
        assert s.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(s.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        for name in [n for n, s in alive.items() if not pid_alive(s.pid or 0, s.directory)]:
            outcome[name] = "stopped"
            del alive[name]
        time.sleep(0.1)
    for name, s in alive.items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(s.pid or 0, signal.SIGKILL)
        outcome[name] = "killed"
    return outcome


def site_status(site_dir: Path, *, timeout: float = 3.0) -> dict[str, Any]:
    """The daemon's /status with up=True; when none answers, up=False and how it last ended
    (`exit`: node.daemon.exit_record, None when it left no record)."""
    try:
        return {"up": True, **fetch_status(site_dir / CONTROL_FILE, timeout=timeout)}
    except DaemonNotRunning as exc:
        return {
            "up": False,
            "site": site_dir.name,
            "error": str(exc),
            "exit": read_exit_record(site_dir),
        }


def site_dashboard(site_dir: Path) -> str | None:
    """The site daemon's dashboard address with this start's token; None if not serving."""
    try:
        return site_dashboard_url(site_dir / CONTROL_FILE)
    except DaemonNotRunning:
        return None


def cluster_status(directory: Path) -> list[dict[str, Any]]:
    sites, _doc = read_cluster(directory)
    return [site_status(s.directory) for s in sites]


def wait_until(
    check: Callable[[], bool], *, timeout: float, interval: float = 0.2, what: str = "condition"
) -> None:
    """Poll `check` until true; ClusterError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- a toy base model for demos and tests ----------------------------------------------------


def toy_base_spec() -> Any:
    """A base model that builds in seconds: for trying the daemons, not for learning."""
    from gossipmed.learn.base_model import BaseSpec

    return BaseSpec(
        vocab_size=320,
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
        seq_len=32,
        steps=2,
        batch_size=4,
        max_docs=100,
    )


def ensure_toy_base(path: Path) -> Path:
    from gossipmed.errors import ModelError
    from gossipmed.learn.base_model import build_base

    if (path / "config.json").is_file():
        return path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return build_base(toy_base_spec(), path)
    except ModelError:
        if (path / "config.json").is_file():  # built concurrently
            return path
        raise


def toy_sections(
    *,
    index: int,
    nodes: int,
    base_model: Path,
    rounds: int,
    round_timeout_s: float,
    steps: int = 2,
) -> dict[str, dict[str, Any]]:
    """Tables for a fast toy cluster: toy base, a few hundred synthetic notes, short rounds."""
    sections = default_sections(
        index=index,
        nodes=nodes,
        rounds=rounds,
        round_timeout_s=round_timeout_s,
        dataset="notes",
        base_model=str(base_model),
        steps=steps,
    )
    sections["data"].update(max_train_examples=100 * nodes, eval_size=30, max_length=32)
    sections["train"].update(batch_size=8)
    sections["dp"] = {"planned_steps": 20 * steps}
    return sections
