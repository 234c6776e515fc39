#!/usr/bin/env python
"""Envelope overhead and speed: bytes on the wire over raw tensor bytes, and seal/open time
per MiB for LoRA-shaped adapters (rank-16 A/B pairs of width 1024, float32).

    .venv/bin/python scripts/bench_envelope.py --sizes-mib 1 8 32 --repeats 7
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import torch
from nacl.public import Box, PrivateKey, PublicKey

from gossipmed.consortium.crypto import derive_identity
from gossipmed.consortium.member import Member
from gossipmed.consortium.roster import Roster
from gossipmed.wire.envelope import EnvelopeSealer, ReplayGuard
from gossipmed.wire.tensors import encode_payload, schema_of

MIB = 1 << 20
SECRET = b"bench-envelope-secret-0123456789"


def lora_adapter(mib: float, *, rank: int = 16, width: int = 1024) -> dict[str, torch.Tensor]:
    """A/B pairs of (rank x width) float32 until the adapter holds `mib` MiB."""
    per_tensor = rank * width * 4
    n = max(1, round(mib * MIB / per_tensor))
    gen = torch.Generator().manual_seed(0)
    return {
        f"model.layers.{i // 2}.self_attn.q_proj.lora_{'AB'[i % 2]}.weight": torch.randn(
            (rank, width) if i % 2 == 0 else (width, rank), generator=gen
        )
        for i in range(n)
    }


def timed(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(mib: float, repeats: int) -> dict[str, Any]:
    ids = {n: derive_identity(SECRET, n) for n in ("a", "b")}
    roster = Roster(
        members=tuple(
            Member(name=n, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)
            for n, i in ids.items()
        ),
        edges=(("a", "b"),),
    )
    sender = EnvelopeSealer(identity=ids["a"], roster=roster)
    receiver = EnvelopeSealer(identity=ids["b"], roster=roster)
    tensors = lora_adapter(mib)
    schema = schema_of(tensors)
    raw = sum(t.numel() * t.element_size() for t in tensors.values())
    rounds = iter(range(1, 10**9))

    def seal() -> bytes:
        return sender.seal(update_tensors=tensors, round=next(rounds), recipient="b", epsilon=1.0)

    envelope = seal()

    def open_() -> None:
        receiver.load_state_dict(ReplayGuard().state_dict())
        receiver.open(envelope, expected_schema=schema)

    payload = encode_payload(tensors, epsilon=1.0)
    box = Box(PrivateKey(ids["a"].x25519_secret), PublicKey(ids["b"].box_key))
    ct = bytes(box.encrypt(payload))
    parts = {
        "encode_payload": timed(lambda: encode_payload(tensors, epsilon=0.0), repeats),
        "box_encrypt": timed(lambda: box.encrypt(payload), repeats),
        "box_decrypt": timed(lambda: box.decrypt(ct), repeats),
        "blake2b_digest": timed(lambda: hashlib.blake2b(ct, digest_size=32).digest(), repeats),
        "ed25519_sign_whole_ct": timed(lambda: ids["a"].sign(ct), repeats),
    }
    seal_s, open_s = timed(seal, repeats), timed(open_, repeats)

    tracemalloc.start()
    receiver.load_state_dict(ReplayGuard().state_dict())
    base = tracemalloc.get_traced_memory()[0]
    receiver.open(envelope, expected_schema=schema)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()

    mib_raw = raw / MIB
    return {
        "adapter_mib": round(mib_raw, 3),
        "tensors": len(tensors),
        "raw_bytes": raw,
        "envelope_bytes": len(envelope),
        "overhead_bytes": len(envelope) - raw,
        "overhead_pct": round(100 * (len(envelope) - raw) / raw, 4),
        "seal_ms_per_mib": round(1e3 * seal_s / mib_raw, 3),
        "open_ms_per_mib": round(1e3 * open_s / mib_raw, 3),
        "seal_mib_per_s": round(mib_raw / seal_s, 1),
        "open_mib_per_s": round(mib_raw / open_s, 1),
        "open_peak_alloc_over_envelope": round(peak / len(envelope), 2),
        "parts_ms_per_mib": {k: round(1e3 * v / mib_raw, 3) for k, v in parts.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=float, nargs="+", default=[1.0, 8.0, 32.0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = [bench(m, args.repeats) for m in args.sizes_mib]
    print(json.dumps({"torch_threads": 1, "repeats": args.repeats, "results": results}, indent=2))
    ok = all(r["overhead_pct"] <= 1.0 for r in results if r["adapter_mib"] >= 1.0)
    print("overhead <= 1%: " + ("PASS" if ok else "FAIL"), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
