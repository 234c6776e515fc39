"""Site hosts in Ray actors (`--engine ray`): several sites per actor, one shared base each.

Ray is an optional extra (`pip install 'gossipmed[ray]'`), imported only here and only when
asked for. Without `--ray-address` a private local Ray is started with its node address,
and so every service it runs, on 127.0.0.1, and no dashboard; it is shut down when the run
ends (or is interrupted). With an address the run joins that cluster and leaves it up.
A worker that dies ends the run with `WorkerLost`, naming the sites it held.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from gossipmed.errors import ConfigError, GossipmedError
from node.sim.config import SimSection
from node.sim.engine.group import PerHost, host_args
from node.sim.engine.host import HostSpec, SiteHost

EXTRA_HINT = "pip install 'gossipmed[ray]' (or rerun ./scripts/setup)"


class WorkerLost(GossipmedError):
    """A Ray worker died during the run; the simulation cannot go on without its sites."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"--engine ray needs Ray, the optional extra 'ray': {EXTRA_HINT}"
        ) from None
    return ray


def local_ray_options(*, num_cpus: int | None = None) -> dict[str, Any]:
    """How a private local Ray starts: loopback only, no dashboard, quiet."""
    return {
        "num_cpus": num_cpus,
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
        "log_to_driver": False,
        "configure_logging": False,
    }


def plan_workers(
    sites: Sequence[str], *, sites_per_worker: int | None, slots: int
) -> list[tuple[str, ...]]:
    """Sites split in order over workers: `sites_per_worker` each, or evenly over `slots`."""
    per = sites_per_worker or math.ceil(len(sites) / max(1, min(slots, len(sites))))
    return [tuple(sites[i : i + per]) for i in range(0, len(sites), per)]


class RayGroup:
    """One actor per worker, each a SiteHost; calls go to every actor at once."""

    def __init__(self, spec: HostSpec, *, names: Sequence[str]) -> None:
        self.ray = ray = import_ray()
        sim: SimSection = spec.config.sim
        self.started = False
        if not ray.is_initialized():
            if sim.ray_address:
                ray.init(address=sim.ray_address, log_to_driver=False, configure_logging=False)
            else:
                ray.init(**local_ray_options())
            self.started = True
        self.actors: list[Any] = []
        try:
            resources = ray.cluster_resources()
            slots = int(resources.get("CPU", 1) // sim.worker_cpus)
            if sim.worker_gpus > 0:
                slots = min(slots, int(resources.get("GPU", 0) // sim.worker_gpus))
                if slots < 1:
                    raise ConfigError(
                        f"--worker-gpus {sim.worker_gpus}: the Ray cluster has "
                        f"{resources.get('GPU', 0)} GPUs"
                    )
            self.sites = plan_workers(
                list(names), sites_per_worker=sim.sites_per_worker, slots=slots
            )
            remote = ray.remote(SiteHost).options(
                num_cpus=sim.worker_cpus, num_gpus=sim.worker_gpus, max_restarts=0
            )
            threads = max(1, int(sim.worker_cpus))
            self.actors = [
                remote.remote(
                    HostSpec(**{**_fields(spec), "sites": sites, "torch_threads": threads})
                )
                for sites in self.sites
            ]
            self.where = self.call("where")
        except BaseException:
            self.close()
            raise

    def call(self, method: str, args: Mapping[str, Any] | PerHost = {}) -> list[Any]:  # noqa: B006
        ray = self.ray
        per_host = host_args(args, len(self.actors))
        refs = [
            getattr(a, method).remote(**kw) for a, kw in zip(self.actors, per_host, strict=True)
        ]
        try:
            return list(ray.get(refs))
        except ray.exceptions.RayActorError as exc:
            raise self._lost(refs, exc) from None

    def _lost(self, refs: list[Any], exc: BaseException) -> WorkerLost:
        """Which worker died, and the sites it held."""
        ray = self.ray
        for k, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayActorError:
                sites = self.sites[k]
                shown = ", ".join(sites[:8]) + (
                    f" and {len(sites) - 8} more" if len(sites) > 8 else ""
                )
                where = getattr(self, "where", None)
                node = f" on {where[k].get('node_ip', '?')}" if where else ""
                return WorkerLost(f"Ray worker {k}{node} died holding sites {shown}")
            except Exception:
                continue
        return WorkerLost(f"a Ray worker died: {' '.join(str(exc).split())[:200]}")

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "ray",
            "ray_version": self.ray.__version__,
            "workers": [
                {"worker": k, **self.where[k], "sites": list(sites)}
                for k, sites in enumerate(self.sites)
            ],
        }

    def close(self) -> None:
        """Stop every actor, and the local Ray this run started."""
        ray = self.ray
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone: nothing left to stop
                ray.kill(actor)
        self.actors = []
        if self.started:
            self.started = False
            ray.shutdown()


def _fields(spec: HostSpec) -> dict[str, Any]:
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__}
