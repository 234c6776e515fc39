"""Site hosts in Ray actors (`--engine ray`): several sites per actor, one shared base each.

Ray is an optional extra (`pip install 'gossipmed[ray]'`), imported only here and only when
asked for. Without `--ray-address` a private local Ray is started with its node address,
and so every service it runs, on loopback, and no dashboard; it is shut down when the run
ends (or is interrupted). With an address the run joins that cluster and leaves it up; a
driver that runs several simulations in a Ray it started itself (tests, notebooks) gets
the last clean run's actors back instead of starting new processes. A worker that dies ends
the run with `WorkerLost`, naming the sites it held.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from gossipmed.errors import ConfigError, GossipmedError
from node.sim.config import SimSection
from node.sim.engine.group import PerHost, host_args
from node.sim.engine.host import HostSpec, SiteHost

EXTRA_HINT = "pip install 'gossipmed[ray]' (or rerun ./scripts/setup)"


class WorkerLost(GossipmedError):
    """A Ray worker died during the run; the simulation cannot go on without its sites."""


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for a single-machine node: set to 0, the node's address is the loopback one
and Ray's services (GCS, raylet, object manager, workers) listen on it alone."""


def import_ray(*, local: bool) -> Any:
    """Ray, or a one-line error naming the extra. `local`: this driver will start a private
    Ray (never when joining a cluster, whose nodes must see each other)."""
    if local and "ray" not in sys.modules:  # read once, when Ray is imported
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"--engine ray needs Ray, the optional extra 'ray': {EXTRA_HINT}"
        ) from None
    return ray


def on_this_machine(address: str | None) -> bool:
    """No address (a private Ray), or a loopback one (a Ray started on loopback here)."""
    if not address:
        return True
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_ray_options(*, num_cpus: int | None = None) -> dict[str, Any]:
    """How a private local Ray starts: always a new one (never another Ray running here),
    loopback only, no dashboard, quiet."""
    return {
        "address": "local",
        "num_cpus": num_cpus,
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
        "log_to_driver": False,
        "configure_logging": False,
    }


def start_local_ray(*, num_cpus: int | None = None) -> Any:
    """A private Ray on this machine that nothing outside it can reach; refuses to go on
    (and stops it) when its node address is not a loopback one."""
    os.environ[LOOPBACK_ENV] = "0"  # the Ray processes started below read it too
    ray = import_ray(local=True)
    ray.init(**local_ray_options(num_cpus=num_cpus))
    addresses = {node["NodeManagerAddress"] for node in ray.nodes()}
    if not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        ray.shutdown()
        raise GossipmedError(
            f"the local Ray would listen on {', '.join(sorted(addresses))}, not only on "
            f"loopback: start Ray yourself (ray start --head) and pass --ray-address"
        )
    return ray


def plan_workers(
    sites: Sequence[str], *, sites_per_worker: int | None, slots: int
) -> list[tuple[str, ...]]:
    """Sites split in order over workers: `sites_per_worker` each, or evenly over `slots`."""
    per = sites_per_worker or math.ceil(len(sites) / max(1, min(slots, len(sites))))
    return [tuple(sites[i : i + per]) for i in range(0, len(sites), per)]


class HostProcess:
    """A Ray actor that holds one SiteHost at a time: a process (with torch imported, which
    is most of an actor's start-up) that the next simulation of this driver can reuse."""

    def __init__(self) -> None:
        self.host: SiteHost | None = None

    def setup(self, spec: HostSpec) -> dict[str, Any]:
        self.host = None  # the last run's sites and base go before the next ones load
        self.host = SiteHost(spec)
        return self.host.where()

    def call(self, method: str, kwargs: Mapping[str, Any]) -> Any:
        assert self.host is not None
        return getattr(self.host, method)(**kwargs)

    def release(self) -> None:
        self.host = None


_IDLE: dict[tuple[str, str, float, float], list[Any]] = {}
"""Actors a finished simulation left for the next one, by (driver's Ray node, job, CPUs,
GPUs)."""


class RayGroup:
    """One actor per worker, each holding a SiteHost; calls go to every actor at once."""

    def __init__(self, spec: HostSpec, *, names: Sequence[str]) -> None:
        self.ray = ray = import_ray(local=on_this_machine(spec.config.sim.ray_address))
        sim: SimSection = spec.config.sim
        self.started = False
        if not ray.is_initialized():
            if sim.ray_address:
                ray.init(address=sim.ray_address, log_to_driver=False, configure_logging=False)
            else:
                start_local_ray()
            self.started = True
        self.actors: list[Any] = []
        gpus = worker_gpus(sim, device=spec.config.learning.compute.device)
        try:
            context = ray.get_runtime_context()
            self.shape = (context.get_node_id(), context.get_job_id(), sim.worker_cpus, gpus)
            _stop_idle_but(self.shape, ray=ray)  # their CPUs and GPUs would block new actors
            self.sites = plan_workers(
                list(names),
                sites_per_worker=sim.sites_per_worker,
                slots=self._slots(sim, gpus=gpus, sites=len(names)),
            )
            idle = _IDLE.setdefault(self.shape, [])
            remote = ray.remote(HostProcess).options(
                num_cpus=sim.worker_cpus, num_gpus=gpus, max_restarts=0
            )
            while len(self.actors) < len(self.sites):
                self.actors.append(idle.pop() if idle else remote.remote())
            threads = max(1, int(sim.worker_cpus))
            refs = [
                a.setup.remote(
                    HostSpec(**{**_fields(spec), "sites": sites, "torch_threads": threads})
                )
                for a, sites in zip(self.actors, self.sites, strict=True)
            ]
            self.where: list[dict[str, Any]] = self._get(refs)
        except BaseException:
            self.close(reuse=False)
            raise

    def _slots(self, sim: SimSection, *, gpus: float, sites: int) -> int:
        """How many workers the cluster can run at once (more would wait forever)."""
        resources = self.ray.cluster_resources()
        slots = int(resources.get("CPU", 0) // sim.worker_cpus)
        if gpus > 0:
            slots = min(slots, int(resources.get("GPU", 0) // gpus))
        if slots < 1 or (sim.sites_per_worker and -(-sites // sim.sites_per_worker) > slots):
            raise ConfigError(
                f"the Ray cluster ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} "
                f"GPUs) has room for {slots} workers of {sim.worker_cpus:g} CPUs and "
                f"{gpus:g} GPUs; use fewer (--sites-per-worker) or smaller ones"
            )
        return slots

    def call(self, method: str, args: Mapping[str, Any] | PerHost = {}) -> list[Any]:  # noqa: B006
        per_host = host_args(args, len(self.actors))
        refs = [a.call.remote(method, kw) for a, kw in zip(self.actors, per_host, strict=True)]
        return self._get(refs)

    def _get(self, refs: list[Any]) -> list[Any]:
        ray = self.ray
        try:
            return list(ray.get(refs))
        except ray.exceptions.RayActorError as exc:
            raise self._lost(refs, exc) from None
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, GossipmedError):  # our own error, without Ray's wrapping
                raise cause from None
            raise

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
                return WorkerLost(
                    f"Ray worker {k}{node} died holding sites {shown} ({_reason(exc)})"
                )
            except Exception:
                continue
        return WorkerLost(f"a Ray worker died: {_reason(exc)}")

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "ray",
            "ray_version": self.ray.__version__,
            "workers": [
                {"worker": k, **self.where[k], "sites": list(sites)}
                for k, sites in enumerate(self.sites)
            ],
        }

    def close(self, *, reuse: bool = True) -> None:
        """Stop every actor (or, after a clean run in a Ray this run did not start, keep them
        for the next simulation), and the local Ray this run started."""
        ray = self.ray
        actors, self.actors = self.actors, []
        if reuse and not self.started:
            try:
                ray.get([a.release.remote() for a in actors])
            except ray.exceptions.RayError:
                pass
            else:
                _IDLE.setdefault(self.shape, []).extend(actors)
                return
        _kill(actors, ray=ray)
        if self.started:
            self.started = False
            ray.shutdown()


def worker_gpus(sim: SimSection, *, device: str) -> float:
    """GPUs per worker: as asked, else one per worker when the base is to run on CUDA."""
    if device.startswith("cuda:") and device != "cuda:0":
        # Ray shows each worker only the GPUs it assigned, as cuda:0 and up
        raise ConfigError(f"--device {device} cannot pick a GPU on the Ray engine: use cuda")
    if sim.worker_gpus > 0:
        return sim.worker_gpus
    return 1.0 if device.startswith("cuda") else 0.0


def _stop_idle_but(shape: tuple[str, str, float, float], *, ray: Any) -> None:
    """Stop the idle actors of this driver's other shapes (CPUs, GPUs): they hold resources
    that actors of a new shape would wait for without end."""
    for other in [k for k in _IDLE if k[:2] == shape[:2] and k != shape]:
        _kill(_IDLE.pop(other), ray=ray)


def _kill(actors: Sequence[Any], *, ray: Any) -> None:
    for actor in actors:
        with contextlib.suppress(Exception):  # already gone: nothing left to stop
            ray.kill(actor)


def _reason(exc: BaseException) -> str:
    """Ray's account of a worker's death (killed, out of memory, node lost), on one line,
    without the indented actor id, pid and namespace lines that would crowd it out."""
    lines = [line for line in str(exc).splitlines() if not line.startswith("\t")]
    return " ".join(" ".join(lines).split())[:300]


def _fields(spec: HostSpec) -> dict[str, Any]:
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__}
