#!/usr/bin/env python
"""Fuzz the envelope opening path: mutated and random inputs must only ever raise the typed
GossipmedError subclasses, and no input may make opening allocate more than the size limit.

Inputs come from valid envelopes, mutated blindly (bit flips, splices, truncation, random
bytes, length fields claiming GiBs) and structurally (header fields replaced by random
msgpack values, payloads mutated and then re-encrypted and re-signed with the real sender
key so the fuzzer also reaches decryption and payload checks). Peak Python allocation per
open is measured with tracemalloc (numpy buffers included).

    .venv/bin/python scripts/fuzz_envelope.py --n 100000 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import struct
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import msgpack
import torch
from nacl.public import Box, PrivateKey, PublicKey

from gossipmed.consortium.crypto import derive_identity
from gossipmed.consortium.member import Member
from gossipmed.consortium.roster import Roster
from gossipmed.errors import GossipmedError
from gossipmed.wire.envelope import EnvelopeSealer, ReplayGuard
from gossipmed.wire.envelope_format import signed_message
from gossipmed.wire.tensors import encode_payload, schema_of

SECRET = b"fuzz-envelope-secret-0123456789"
NOW = 1_700_000_000.0
DEFAULT_MAX_BYTES = 1 << 20  # 1 MiB limit for the fuzz sites; base envelopes are far smaller
# Opening a valid envelope holds the ciphertext, the plaintext and the tensor copies (about
# 3x its length, see docs/benchmarks/envelope.md); nothing may scale with a *claimed* length.
PEAK_FACTOR = 4
PEAK_SLACK = 256 * 1024


@dataclass
class FuzzReport:
    count: int = 0
    accepted: int = 0
    seconds: float = 0.0
    max_bytes: int = DEFAULT_MAX_BYTES
    max_input_bytes: int = 0
    max_peak_bytes: int = 0
    max_peak_over_input_4k: float = 0.0  # peak / input length, inputs of 4 KiB or more
    # inputs whose peak allocation exceeded PEAK_FACTOR x their own length + PEAK_SLACK
    bound_violations: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    strategies: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)


class _World:
    """A four-site consortium, base envelopes a -> b, and the means to forge more."""

    def __init__(self, rng: random.Random, max_bytes: int) -> None:
        self.ids = {n: derive_identity(SECRET, n) for n in ("a", "b", "c", "mallory")}
        members = tuple(
            Member(name=n, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)
            for n, i in self.ids.items()
            if n != "mallory"
        )
        self.roster = Roster(members=members, edges=(("a", "b"), ("b", "c")))
        self.sender = EnvelopeSealer(
            identity=self.ids["a"], roster=self.roster, clock=lambda: NOW, max_bytes=max_bytes
        )
        self.opener = EnvelopeSealer(
            identity=self.ids["b"], roster=self.roster, clock=lambda: NOW, max_bytes=max_bytes
        )
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        self.bases: list[tuple[bytes, dict[str, Any]]] = []
        for shapes in (
            {"w": (2,)},
            {"l0.A": (4, 16), "l0.B": (16, 4)},
            {"l0.A": (8, 64), "l0.B": (64, 8), "l1.A": (8, 64), "l1.B": (64, 8)},
            {"big.A": (64, 256)},
        ):
            dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16])
            tensors = {k: torch.randn(s, generator=gen).to(dtype) for k, s in shapes.items()}
            data = self.sender.seal(
                update_tensors=tensors, round=1, step=0, recipient="b", epsilon=1.0
            )
            self.bases.append((data, schema_of(tensors)))

    def forge(
        self, header: dict[str, Any], payload: bytes, *, signer: str = "a", box_from: str = "a"
    ) -> bytes:
        hbytes = msgpack.packb(header, use_bin_type=True)
        box = Box(PrivateKey(self.ids[box_from].x25519_secret), PublicKey(self.ids["b"].box_key))
        ct = bytes(box.encrypt(payload))
        sig = self.ids[signer].sign(signed_message(hbytes, ct))
        return msgpack.packb({"h": hbytes, "c": ct, "s": sig}, use_bin_type=True)

    def header(self, payload: bytes) -> dict[str, Any]:
        return {
            "v": 2,
            "sender": "a",
            "recipient": "b",
            "round": 1,
            "step": 0,
            "ts": NOW,
            "codec": "raw",
            "size": len(payload),
            "roster": self.roster.hash,
        }


def _random_obj(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63 - 1, -(2**63), rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -0.0, float("nan"), float("inf"), 1e308, rng.random()])
    if kind == 4:
        return rng.choice(["", "a", "b", "raw", "float32", "x" * rng.randrange(300)])
    if kind == 5:
        return rng.randbytes(rng.choice([0, 1, 32, 64, rng.randrange(200)]))
    if kind in (6, 7):
        return rng.choice([1, 2, 1.0, "a", b"a"])
    if kind in (8, 9):
        return [_random_obj(rng, depth + 1) for _ in range(rng.randrange(6))]
    return {
        rng.choice(["v", "h", "c", "s", "dtype", "shape", "data", "tensors", "w", "k"]): (
            _random_obj(rng, depth + 1)
        )
        for _ in range(rng.randrange(6))
    }


_LENGTH_BOMBS = [
    b"\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB
    b"\xdb\xff\xff\xff\xff",  # str32
    b"\xdd\xff\xff\xff\xff",  # array32
    b"\xdf\xff\xff\xff\xff",  # map32
    b"\xc9\xff\xff\xff\xff\x01",  # ext32
    b"\x91" * 5000,  # deep nesting
    b"\xdc\xff\xff" + b"\xc0" * 100,  # array16 of nils, short
]


def _blind(rng: random.Random, data: bytes, corpus: list[bytes]) -> tuple[str, bytes]:
    b = bytearray(data)
    op = rng.randrange(9)
    if op == 0:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return "bitflip", bytes(b)
    if op == 1:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return "byteset", bytes(b)
    if op == 2:
        return "truncate", bytes(b[: rng.randrange(len(b))])
    if op == 3:
        i = rng.randrange(len(b))
        return "insert", bytes(b[:i] + rng.randbytes(rng.randint(1, 64)) + b[i:])
    if op == 4:
        i = rng.randrange(len(b))
        return "delete", bytes(b[:i] + b[i + rng.randint(1, 64) :])
    if op == 5:
        other = rng.choice(corpus)
        i, j = rng.randrange(len(b)), rng.randrange(len(other))
        return "splice", bytes(b[:i] + other[j:])
    if op == 6:
        i = rng.randrange(len(b))
        return "length-bomb", bytes(b[:i] + rng.choice(_LENGTH_BOMBS) + b[i:])
    if op == 7:
        # overwrite a plausible 4-byte big-endian length field with a huge value
        i = rng.randrange(max(1, len(b) - 4))
        b[i : i + 4] = struct.pack(">I", rng.choice([2**32 - 1, 2**31, len(b) + 1]))
        return "length-lie", bytes(b)
    return "append", bytes(b + rng.randbytes(rng.randint(1, 64)))


def _structural(rng: random.Random, world: _World, data: bytes) -> tuple[str, bytes]:
    """Header-aware mutations; those re-signed with a's key reach the later checks."""
    outer = msgpack.unpackb(data)
    header = msgpack.unpackb(outer["h"])
    op = rng.randrange(9)
    if op == 0:  # a header field gets a random value, not re-signed
        header[rng.choice(list(header))] = _random_obj(rng)
        outer["h"] = msgpack.packb(header, use_bin_type=True)
        return "header-field", msgpack.packb(outer, use_bin_type=True)
    if op == 1:  # outer map gets random fields/values
        key = rng.choice(["h", "c", "s", "x", "v"])
        outer[key] = _random_obj(rng)
        return "outer-field", msgpack.packb(outer, use_bin_type=True)
    payload = encode_payload({"w": torch.randn(2)}, epsilon=0.0)
    body = msgpack.unpackb(payload)
    if op == 2:  # signed header with a random field value
        h = world.header(payload)
        h[rng.choice(list(h))] = _random_obj(rng)
        return "signed-header", world.forge(h, payload)
    if op == 3:  # signed, decryptable payload with a random field
        body[rng.choice(["v", "tensors", "epsilon", "extra"])] = _random_obj(rng)
        p = msgpack.packb(body, use_bin_type=True)
        return "signed-payload", world.forge(world.header(p), p)
    if op == 4:  # signed, decryptable payload with a mutated tensor record
        rec = body["tensors"]["w"]
        rec[rng.choice(["dtype", "shape", "data", "junk"])] = _random_obj(rng)
        p = msgpack.packb(body, use_bin_type=True)
        return "signed-tensor", world.forge(world.header(p), p)
    if op == 5:  # signed, decryptable, blindly corrupted payload bytes
        _, p2 = _blind(rng, payload, [payload])
        return "signed-payload-bytes", world.forge(world.header(p2), p2)
    if op == 6:  # signed, timestamp anywhere from now to far away
        h = world.header(payload)
        h["ts"] = NOW + rng.choice([-1, 1]) * rng.choice([1.0, 599.0, 601.0, 1e6, 1e12])
        return "signed-timestamp", world.forge(h, payload)
    if op == 7:  # signed by a, but encrypted with c's box key
        return "signed-wrong-box", world.forge(world.header(payload), payload, box_from="c")
    body["tensors"]["w"]["data"] = struct.pack(  # signed, decryptable, NaN/Inf inside
        "<ff", rng.random(), rng.choice([float("nan"), float("inf"), -float("inf")])
    )
    p = msgpack.packb(body, use_bin_type=True)
    return "signed-nonfinite", world.forge(world.header(p), p)


def _input(rng: random.Random, world: _World) -> tuple[str, bytes, dict[str, Any]]:
    base, schema = rng.choice(world.bases)
    r = rng.random()
    if r < 0.02:
        return "control", base, schema
    if r < 0.03:
        return "replay", base, schema
    if r < 0.50:
        name, data = _blind(rng, base, [b for b, _ in world.bases])
        return name, data, schema
    if r < 0.80:
        name, data = _structural(rng, world, base)
        return name, data, {"w": ("float32", (2,))} if name.startswith("signed") else schema
    if r < 0.90:
        return "random-bytes", rng.randbytes(rng.choice([0, 1, 8, rng.randrange(4096)])), schema
    obj = _random_obj(rng)
    try:
        return "random-msgpack", msgpack.packb(obj, use_bin_type=True), schema
    except (ValueError, TypeError, OverflowError):
        return "random-bytes", rng.randbytes(16), schema


def run_fuzz(
    *,
    n: int,
    seed: int = 0,
    trace_memory: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: Any = None,
) -> FuzzReport:
    rng = random.Random(seed)
    world = _World(rng, max_bytes)
    report = FuzzReport(max_bytes=max_bytes)
    if trace_memory:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        for i in range(n):
            strategy, data, schema = _input(rng, world)
            report.strategies[strategy] += 1
            world.opener.load_state_dict(ReplayGuard().state_dict())
            if strategy == "replay":  # accepted once, so the input below is the replay
                world.opener.open(data, expected_schema=schema)
            report.max_input_bytes = max(report.max_input_bytes, len(data))
            if trace_memory:
                tracemalloc.reset_peak()
                base_mem = tracemalloc.get_traced_memory()[0]
            try:
                world.opener.open(data, expected_schema=schema)
                report.accepted += 1
                report.errors["accepted"] += 1
            except GossipmedError as exc:
                report.errors[type(exc).__name__] += 1
            except Exception as exc:
                digest = hashlib.blake2b(data, digest_size=8).hexdigest()
                report.unexpected.append(f"{strategy} #{i} {digest}: {type(exc).__name__}: {exc}")
            if trace_memory:
                peak = tracemalloc.get_traced_memory()[1] - base_mem
                report.max_peak_bytes = max(report.max_peak_bytes, peak)
                if peak > PEAK_FACTOR * len(data) + PEAK_SLACK:
                    report.bound_violations += 1
                if len(data) >= 4096:
                    report.max_peak_over_input_4k = max(
                        report.max_peak_over_input_4k, peak / len(data)
                    )
            report.count += 1
            if progress is not None:
                progress(i)
    finally:
        if trace_memory:
            tracemalloc.stop()
    report.seconds = time.perf_counter() - start
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="inputs to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    parser.add_argument("--no-trace", action="store_true", help="skip tracemalloc (faster)")
    parser.add_argument("--json-out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)

    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task("fuzzing open()", total=args.n)
        report = run_fuzz(
            n=args.n,
            seed=args.seed,
            trace_memory=not args.no_trace,
            max_bytes=args.max_bytes,
            progress=lambda i: bar.update(task, completed=i + 1) if i % 500 == 0 else None,
        )
    doc = {f.name: getattr(report, f.name) for f in fields(report)}
    doc["errors"] = dict(report.errors.most_common())
    doc["strategies"] = dict(report.strategies.most_common())
    doc["unexpected_count"] = len(report.unexpected)
    doc["unexpected"] = report.unexpected[:20]
    doc["inputs_per_second"] = round(report.count / report.seconds, 1)
    print(json.dumps(doc, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
    ok = (
        not report.unexpected
        and report.max_peak_bytes <= report.max_bytes
        and report.bound_violations == 0
    )
    print("PASS" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
