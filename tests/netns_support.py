"""Linux network namespaces for daemon tests: one namespace per site, joined by a bridge that
lives in its own namespace, and an nftables firewall that makes a site unreachable.

Needs root, iproute2 and (for the firewall) nftables, which `scripts/setup` installs as root.
Every constructor skips the calling test with the reason when something is not permitted, and
`close()` deletes everything it made (deleting a namespace removes its veth ends too).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence

import pytest

SUBNET = "10.232.0"
FIREWALL_TABLE = "gossipmed_test"
# Drops every new inbound TCP connection (a SYN without ACK) that does not come from the
# namespace's own loopback, and counts them: the count is how often anyone tried to dial in.
FIREWALL = f"""
table inet {FIREWALL_TABLE} {{
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname "lo" accept
    tcp flags & (syn | ack) == syn counter drop
  }}
}}
"""


def _run(args: Sequence[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, input=stdin)


class Namespaces:
    """Sites `0..n-1` at SUBNET.(i+1) in namespaces `<tag>s<i>`, bridged in `<tag>sw`."""

    def __init__(self, n: int, *, tag: str | None = None) -> None:
        if shutil.which("ip") is None:
            pytest.skip("iproute2 `ip` is not installed")
        self.tag = tag or f"gmo{os.getpid() % 100000}"
        self.switch = f"{self.tag}sw"
        self.names = [f"{self.tag}s{i}" for i in range(n)]
        self.addresses = [f"{SUBNET}.{i + 1}" for i in range(n)]
        self._made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _step(self, *args: str) -> None:
        res = _run(["ip", *args])
        if res.returncode != 0:
            pytest.skip(f"`ip {' '.join(args)}` not permitted here: {res.stderr.strip()}")

    def _build(self) -> None:
        for ns in (self.switch, *self.names):
            self._step("netns", "add", ns)
            self._made.append(ns)
            self._step("-n", ns, "link", "set", "lo", "up")
        self._step("-n", self.switch, "link", "add", "br0", "type", "bridge")
        self._step("-n", self.switch, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(self.names, self.addresses, strict=True)):
            site_end, bridge_end = f"{self.tag}v{i}", f"{self.tag}b{i}"
            self._step("link", "add", site_end, "type", "veth", "peer", "name", bridge_end)
            self._step("link", "set", site_end, "netns", ns)
            self._step("link", "set", bridge_end, "netns", self.switch)
            self._step("-n", self.switch, "link", "set", bridge_end, "master", "br0")
            self._step("-n", self.switch, "link", "set", bridge_end, "up")
            self._step("-n", ns, "addr", "add", f"{addr}/24", "dev", site_end)
            self._step("-n", ns, "link", "set", site_end, "up")

    def prefix(self, i: int) -> list[str]:
        """Command prefix that runs a process in site i's namespace."""
        return ["ip", "netns", "exec", self.names[i]]

    def firewall(self, i: int) -> None:
        """Site i accepts no inbound TCP connection from outside its namespace."""
        if shutil.which("nft") is None:
            pytest.skip("nftables `nft` is not installed (scripts/setup installs it as root)")
        res = _run([*self.prefix(i), "nft", "-f", "-"], stdin=FIREWALL)
        if res.returncode != 0:
            pytest.skip(f"cannot load an nftables rule here: {res.stderr.strip()}")

    def dropped_connection_attempts(self, i: int) -> int:
        """Inbound connection attempts site i's firewall dropped so far."""
        res = _run([*self.prefix(i), "nft", "-j", "list", "table", "inet", FIREWALL_TABLE])
        assert res.returncode == 0, res.stderr
        for item in json.loads(res.stdout)["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        raise AssertionError("the firewall rule has no counter")

    def can_connect(self, source: int, target: int, port: int) -> bool:
        """Whether a plain TCP connect from site `source` to site `target` gets through."""
        code = (
            "import socket,sys\n"
            "s=socket.socket(); s.settimeout(2)\n"
            f"sys.exit(0 if s.connect_ex(({self.addresses[target]!r}, {port})) in (0, 111) "
            "else 1)\n"
        )
        return _run([*self.prefix(source), "python3", "-c", code]).returncode == 0

    def close(self) -> None:
        for ns in reversed(self._made):
            _run(["ip", "netns", "del", ns])
        self._made.clear()
