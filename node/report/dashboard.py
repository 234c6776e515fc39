"""The dashboard's data: one JSON document that the page in node/report/dashboard/ draws.

Two sources, one format (`DASHBOARD_VERSION`):
- a running daemon (`site_snapshot`): its /status plus its own metrics history, and its
  neighbourhood as the graph;
- a folder that `gossipmed inspect` reads (`DirectoryView`): a simulation run directory, a
  site folder, or a cluster folder of site folders, with the whole topology (from the
  consortium file or the simulation's config) and, for sites whose daemon runs, their live
  /status (fetched with a short timeout from a worker thread, never from the event loop).

No sockets here: node.daemon.control_routes serves it. The page's assets ship as package data.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from gossipmed.errors import ConfigError
from gossipmed.metrics import METRICS_FILE
from gossipmed.strict_json import dumps
from node.report.history import COLUMNS, MetricsTail

DASHBOARD_VERSION = 1
REFRESH_S = 2.0
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
MAX_HISTORY_ROWS = 20000  # over all sites of a directory
STATUS_TIMEOUT_S = 1.0


def asset(name: str) -> bytes:
    """One of the page's files (package data: node/report/dashboard/)."""
    if name not in ASSETS:
        raise KeyError(name)
    return (resources.files("node.report") / "dashboard" / name).read_bytes()


def encode(snapshot: Mapping[str, Any]) -> bytes:
    return dumps(dict(snapshot), sort_keys=True).encode()


def site_card(name: str, status: Mapping[str, Any] | None, rows: list[list[Any]]) -> dict[str, Any]:
    """One site for the table and the graph: live status when there is one, else its last
    metrics row."""
    last = dict(zip(COLUMNS, rows[-1], strict=True)) if rows else {}
    eps = (status or {}).get("epsilon") or {}
    # a running daemon counts its traffic since it started; a finished run or a stopped site
    # has only its metrics, whose rows carry each round's bytes
    traffic = (status or {}).get("bytes") or _history_bytes(rows)
    return {
        "name": name,
        "up": None if status is None else bool(status.get("up", True)),
        "ready": (status or {}).get("ready"),
        "round": (status or {}).get("round", last.get("round")),
        "phase": (status or {}).get("phase"),
        "completed": (status or {}).get("completed", len(rows) if rows else None),
        "epsilon_spent": eps.get("spent", last.get("epsilon")),
        "epsilon_budget": eps.get("budget"),
        "accuracy": last.get("accuracy"),
        "accuracy_norm": last.get("accuracy_norm"),
        "eval_loss": last.get("eval_loss"),
        "eval_perplexity": last.get("eval_perplexity"),
        "consensus_distance": last.get("consensus_distance"),
        "bytes_sent": traffic.get("sent"),
        "bytes_received": traffic.get("received"),
    }


def score(history: Mapping[str, list[list[Any]]]) -> dict[str, str]:
    """What the page charts and lists as the model's quality: accuracy when any round has
    one, else (free text) the held-out loss."""
    at = COLUMNS.index("accuracy")
    if any(row[at] is not None for rows in history.values() for row in rows):
        return {"column": "accuracy", "label": "accuracy"}
    loss = COLUMNS.index("eval_loss")
    if any(row[loss] is not None for rows in history.values() for row in rows):
        return {"column": "eval_loss", "label": "eval loss"}
    return {"column": "accuracy", "label": "accuracy"}


def _history_bytes(rows: list[list[Any]]) -> dict[str, int]:
    if not rows:
        return {}
    sent, received = COLUMNS.index("bytes_sent"), COLUMNS.index("bytes_received")
    return {
        "sent": sum(int(r[sent] or 0) for r in rows),
        "received": sum(int(r[received] or 0) for r in rows),
    }


def baseline_curves(path: Path) -> dict[str, list[list[float]]]:
    """A simulation's baselines (local-only, centralized) as [round, mean accuracy] points,
    drawn next to gossip's per-site curves; {} for a run without them."""
    from node.report.summary import BASELINE_PATHS, RUN_LABELS

    curves: dict[str, list[list[float]]] = {}
    for name, rel in BASELINE_PATHS.items():
        if not (path / rel).is_file():
            continue
        by_round: dict[int, list[float]] = {}
        for site_rows in MetricsTail(path / rel, limit=MAX_HISTORY_ROWS).rows().values():
            for r in site_rows:
                rnd, acc = r[COLUMNS.index("round")], r[COLUMNS.index("accuracy")]
                if rnd is not None and acc is not None:
                    by_round.setdefault(int(rnd), []).append(float(acc))
        curves[RUN_LABELS[name]] = [[r, sum(v) / len(v)] for r, v in sorted(by_round.items())]
    return curves


def site_snapshot(status: Mapping[str, Any], history: Mapping[str, list[list[Any]]]) -> dict:
    """What a daemon's own dashboard shows: this site, its neighbours, its history."""
    name = str(status.get("site", ""))
    peers = list(status.get("peers") or [])
    rows = history.get(name) or next(iter(history.values()), [])
    return {
        "v": DASHBOARD_VERSION,
        "mode": "site",
        "title": f"gossipmed: {name}",
        "now": time.time(),
        "refresh_s": REFRESH_S,
        "focus": name,
        "columns": list(COLUMNS),
        "sites": [site_card(name, status, rows)],
        "neighbours": peers,
        "graph": {
            "nodes": [name, *(str(p.get("name")) for p in peers)],
            "edges": [[name, str(p.get("name"))] for p in peers],
            "rounds": {
                name: status.get("round"),
                **{str(p.get("name")): p.get("last_round") for p in peers},
            },
        },
        "history": {name: rows},
        "score": score({name: rows}),
        "status": dict(status),
    }


# --- folders -----------------------------------------------------------------------------------


def _load_graph(path: Path, kind: str) -> dict[str, Any] | None:
    """Nodes, edges and diallers of the consortium (or the simulation's topology)."""
    try:
        if kind == "run":
            return _sim_graph(path / "config.toml")
        from gossipmed.consortium.roster import load_roster

        roster_file = path / "consortium.toml"
        if kind == "site" or not roster_file.is_file():
            from gossipmed.consortium.site import load_site

            site_dir = path if kind == "site" else next(p.parent for p in path.glob("*/site.toml"))
            roster = load_site(site_dir).roster()
        else:
            roster = load_roster(roster_file)
    except Exception:  # a folder without a readable topology still shows its metrics
        return None
    return {
        "nodes": list(roster.active_names),
        "edges": [list(e) for e in roster.edges if all(not roster.member(x).revoked for x in e)],
        "dial": [list(d) for d in roster.dial],
        "unreachable": [m.name for m in roster.members if not m.reachable],
    }


def _sim_graph(config_file: Path) -> dict[str, Any]:
    from node.sim.config import load_toml, sim_config_from_mapping
    from topology.schedule import MixingSchedule

    config = sim_config_from_mapping(load_toml(config_file))
    sim = config.sim
    schedule = MixingSchedule.from_graphs(config.graphs())
    dp = config.learning.dp
    private = dp.enabled and sim.problem != "quadratic"
    return {
        "nodes": schedule.sites,
        "edges": [list(e) for e in schedule.edges()],
        "dial": [],
        "epsilon_budget": dp.epsilon if private else None,
    }


def folder_kind(path: Path) -> str:
    """ "run" (a simulation), "site" (one daemon's folder) or "cluster" (site folders)."""
    if (path / "site.toml").is_file():
        return "site"
    if (path / METRICS_FILE).is_file():
        return "run"
    if any(path.glob("*/site.toml")) or any(path.glob(f"*/{METRICS_FILE}")):
        return "cluster"
    raise ConfigError(f"{path}: no {METRICS_FILE} and no site folders (nothing to show)")


class DirectoryView:
    """A folder's dashboard; `refresh()` (blocking: run it in a worker thread) rebuilds the
    snapshot that `snapshot()` hands out."""

    def __init__(self, path: Path, *, live: bool = True) -> None:
        self.path = path
        self.kind = folder_kind(path)
        self.live = live
        if self.kind == "cluster":
            dirs = sorted({p.parent for p in path.glob("*/site.toml")})
            dirs = dirs or sorted({p.parent for p in path.glob(f"*/{METRICS_FILE}")})
            self._site_dirs = {d.name: d for d in dirs}
        elif self.kind == "site":
            self._site_dirs = {path.name: path}
        else:
            self._site_dirs = {}
        files = [d / METRICS_FILE for d in self._site_dirs.values()] or [path / METRICS_FILE]
        per_site = max(50, MAX_HISTORY_ROWS // max(1, len(self._site_dirs) or 16))
        self._tails = [MetricsTail(f, limit=per_site) for f in files]
        self._graph = _load_graph(path, self.kind)
        self._snapshot: dict[str, Any] = {}
        self.refresh()

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot

    def refresh(self) -> None:
        history: dict[str, list[list[Any]]] = {}
        for tail in self._tails:
            for site, rows in tail.rows().items():
                history[site or tail.path.parent.name] = rows
        live = self._live_status() if self.live else {}
        names = list(self._graph["nodes"]) if self._graph else []
        names += sorted(set(history) - set(names))
        cards = [site_card(n, live.get(n), history.get(n, [])) for n in names]
        budget = (self._graph or {}).get("epsilon_budget")
        for card in cards:
            if card["epsilon_budget"] is None:
                card["epsilon_budget"] = budget
        graph = dict(self._graph or {"nodes": names, "edges": [], "dial": []})
        graph["rounds"] = {c["name"]: c["round"] for c in cards}
        self._snapshot = {
            "v": DASHBOARD_VERSION,
            "mode": self.kind,
            "title": f"gossipmed: {self.path.resolve().name} ({self.kind})",
            "now": time.time(),
            "refresh_s": REFRESH_S,
            "focus": None,
            "columns": list(COLUMNS),
            "sites": cards,
            "neighbours": [],
            "graph": graph,
            "history": history,
            "score": score(history),
            # a run writes its baselines after gossip: read again at each refresh
            "baselines": baseline_curves(self.path) if self.kind == "run" else {},
        }

    def _live_status(self) -> dict[str, dict[str, Any]]:
        from node.daemon.config import CONTROL_FILE
        from node.daemon.control_client import DaemonNotRunning, fetch_status

        out: dict[str, dict[str, Any]] = {}
        for name, site_dir in self._site_dirs.items():
            if not (site_dir / CONTROL_FILE).is_file():
                continue
            try:
                status = fetch_status(site_dir / CONTROL_FILE, timeout=STATUS_TIMEOUT_S)
            except DaemonNotRunning:
                out[name] = {"up": False}
                continue
            out[str(status.get("site", name))] = {**status, "up": True}
        return out
