"""`gossipmed base build`: build (or locate) the embedded tiny base model."""

from __future__ import annotations

import argparse

from gossipmed.strict_json import dumps


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "base",
        help="the embedded tiny base model (build once, cached)",
        description=(
            "Build the tiny Llama-architecture base: a byte-level BPE tokenizer and a small "
            "causal LM pretrained locally on HPO phenotype text and ICD-10-CM descriptions "
            "(no hub, no network). Without --out it is cached under "
            "$XDG_CACHE_HOME/gossipmed/base-<hash>."
        ),
    )
    sub = p.add_subparsers(dest="base_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="build the base (or print the cached path)")
    b.add_argument("--out", help="write the model folder here instead of the cache")
    b.add_argument("--steps", type=int, help="pretraining steps (default: the built-in spec)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    import dataclasses
    import time
    from pathlib import Path

    from gossipmed.learn.base_model import BaseSpec, build_base_with_progress, ensure_base_model

    spec = BaseSpec() if args.steps is None else BaseSpec(steps=args.steps)
    start = time.perf_counter()
    if args.out:
        path = build_base_with_progress(spec, Path(args.out), show=not args.json)
    else:
        path = ensure_base_model(spec, progress=not args.json)
    seconds = time.perf_counter() - start
    if args.json:
        print(dumps({"path": str(path), "seconds": seconds, "spec": dataclasses.asdict(spec)}))
    else:
        print(f"base model: {path} ({seconds:.0f} s)")
    return 0
