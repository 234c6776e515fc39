"""Foundation-model scale: DP vs non-private steps on random-init bases of real shapes.

For each shape (built from a transformers config, random init, with the tiny base's
tokenizer) and each mode (DP, non-private), one subprocess (so its peak RSS is its own) times
training steps at logical batch 128 with the default (auto) micro-batch; then adapter bytes
per envelope and seal/open time for each shape's LoRA (schema from a meta-device model, so an
8B shape costs nothing), and a 4-site gossip simulation on the Qwen2-0.5B shape (2 rounds of
2 local steps at batch 16, 21 held-out examples; SiteLearners sharing one model, mixed with
gossipmed.mixing.rules.weighted_average on a ring).

A step row is the library's step exactly: `clipped_grad_sum` + `add_noise` (sigma fixed at
1.0; the cost does not depend on it) or `mean_grad`, then the site's Adam step, on a batch of
exactly --batch examples of the synthetic `notes` dataset.

    .venv/bin/python scripts/bench_scale.py                        # CPU, default shapes
    python scripts/bench_scale.py --device cuda --dtype bfloat16 --shapes all --out gpu.jsonl
    .venv/bin/python scripts/bench_scale.py --save DIR --shape gpt2-124m   # a model folder
    .venv/bin/python scripts/bench_scale.py --only sites -- --flower-venv DIR  # many sites

Portable on purpose: it needs torch, transformers, peft, safetensors, msgpack and numpy and
this repository (not installed: the root is put on sys.path), never node/ or libp2p, no
network and no dataset package. Optional: pynacl (seal/open timing; without it only payload
bytes) and opacus (DP in the gossip simulation; without it the simulation runs
non-private and says so). Bring them as wheels: `pip download --no-deps -d wheels pynacl
cffi pycparser opacus opt-einsum scipy` on a networked machine of the same Python, then
`pip install --no-index --find-links wheels pynacl opacus`. The tokenizer: the cached tiny
base (`gossipmed base build`), or copy its tokenizer.json and tokenizer_config.json to a
folder and pass --tokenizer.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# name -> (transformers config class, shape); vocabularies are the real ones
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "toy-llama": (
        "LlamaConfig",
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096},
    ),
    "toy-qwen2": (
        "Qwen2Config",
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096},
    ),
    "toy-gpt2": ("GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 4096}),
    "gpt2-124m": ("GPT2Config", {"n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257}),
    "smollm-135m": (
        "LlamaConfig",
        {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
         "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
         "tie_word_embeddings": True, "max_position_embeddings": 2048},
    ),
    "qwen2-0.5b": (
        "Qwen2Config",
        {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
         "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
         "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1e6},
    ),
    "tinyllama-1.1b": (
        "LlamaConfig",
        {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
         "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
         "max_position_embeddings": 2048},
    ),
    "llama3-8b": (
        "LlamaConfig",
        {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
         "max_position_embeddings": 8192, "rope_theta": 500000.0},
    ),
}  # fmt: skip
DEFAULT_SHAPES = ("gpt2-124m", "smollm-135m", "qwen2-0.5b", "tinyllama-1.1b")
ALL_SHAPES = (*DEFAULT_SHAPES, "llama3-8b")
SIM_SHAPE = "qwen2-0.5b"
BIG = 1_000_000_000  # parameters from which --big-steps applies


def _have(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _default_tokenizer() -> Path:
    from gossipmed.learn.base_model import BaseSpec, cache_root

    return cache_root() / f"base-{BaseSpec().digest()}"


def _config(shape: str, tokenizer: Any) -> Any:
    import transformers

    cls_name, kw = SHAPES[shape]
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return getattr(transformers, cls_name)(**kw, **ids)


def _tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    if not (path / "tokenizer.json").is_file():
        sys.exit(
            f"bench_scale: no tokenizer at {path}: run `gossipmed base build`, or copy the tiny "
            "base's tokenizer.json and tokenizer_config.json there and pass --tokenizer"
        )
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _adapter_model(args: argparse.Namespace, shape: str) -> tuple[Any, float]:
    """Random-init base of `shape` (built in the base dtype) wrapped like a site's."""
    import torch
    from transformers import AutoModelForCausalLM

    from gossipmed.learn.compute import resolve_device, torch_dtype
    from gossipmed.learn.config import AdapterConfig
    from gossipmed.learn.model import AdapterModel

    device = resolve_device(args.device)
    tok = _tokenizer(Path(args.tokenizer))
    start = time.perf_counter()
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(
        _config(shape, tok), dtype=torch_dtype(args.dtype), attn_implementation="eager"
    ).eval()
    model = AdapterModel(base, tok, AdapterConfig(kind="lora"), device=device)
    return model, time.perf_counter() - start


def save_folder(shape: str, tokenizer_dir: Path, out: Path) -> Path:
    """A random-init `shape` saved as a local Hugging Face folder (safetensors + tokenizer):
    what a hospital's model folder looks like, for trying `gossipmed train --base-model`."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = _tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(shape, tok))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _peak() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _clean_imports() -> dict[str, bool]:
    mods = {name for name, mod in sys.modules.items() if mod is not None}
    return {
        "imported_node": any(m == "node" or m.startswith("node.") for m in mods),
        "imported_libp2p": any(m == "libp2p" or m.startswith("libp2p.") for m in mods),
    }


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _notes_train(tokenizer: Any) -> tuple[Any, int]:
    """(encoded training examples of the synthetic notes dataset, max length)."""
    from gossipmed.learn.config import DataConfig
    from gossipmed.learn.data import Encoder
    from gossipmed.learn.datasets import load_dataset

    dc = DataConfig(dataset="notes", n_sites=1, partition="iid", max_train_examples=1024)
    dataset = load_dataset(dc)
    encoder = Encoder(tokenizer, dataset=dataset, max_length=dc.max_length)
    return encoder.encode(dataset.train, loss_on="label"), dc.max_length


def _step(model: Any, mode: str, batch: Any, microbatch: int, optimizer: Any, noise: Any) -> float:
    from gossipmed.privacy.dp import add_noise

    if mode == "dp":
        clipped = model.clipped_grad_sum(
            batch.input_ids, batch.loss_mask, clip_norm=1.0, microbatch=microbatch
        )
        grad = add_noise(
            clipped.grads, clip_norm=1.0, noise_multiplier=1.0,
            expected_batch=float(len(batch)), generator=noise,
        )  # fmt: skip
        loss = float(clipped.losses.mean())
    else:
        grad, loss = model.mean_grad(batch.input_ids, batch.loss_mask, microbatch=microbatch)
    model.apply_update(grad, optimizer=optimizer)
    return loss


def worker_step(args: argparse.Namespace) -> dict[str, Any]:
    """One mode per process (its peak RSS is that mode's), or `pair`: DP and non-private
    steps alternating on the same batches in one process, so load from other jobs on a shared
    machine hits both alike (the fair time ratio)."""
    import torch

    from gossipmed.learn.optim import SiteOptimizer

    model, build_s = _adapter_model(args, args.shape)
    data, max_length = _notes_train(model.tokenizer)
    microbatch = args.microbatch or model.auto_microbatch(seq_len=max_length)
    modes = ["nonprivate", "dp"] if args.mode == "pair" else [args.mode]
    optimizers = {m: SiteOptimizer(kind="adam", lr=0.02) for m in modes}
    order = torch.Generator().manual_seed(0)  # which examples: timing only, protects nobody
    noise = torch.Generator().manual_seed(1)
    n_params = sum(p.numel() for p in model.module.parameters())
    steps = args.big_steps if n_params >= BIG else args.steps
    times: dict[str, list[float]] = {m: [] for m in modes}
    losses: dict[str, float] = {}
    for step in range(args.warmup + steps):
        batch = data.subset(torch.randperm(len(data), generator=order)[: args.batch])
        for mode in modes if step % 2 == 0 else modes[::-1]:
            _sync()
            start = time.perf_counter()
            losses[mode] = _step(model, mode, batch, microbatch, optimizers[mode], noise)
            _sync()
            if step >= args.warmup:
                times[mode].append(time.perf_counter() - start)
    state = model.read_state()
    row = {
        "kind": "step", "shape": args.shape, "mode": args.mode, "device": str(model.device),
        "dtype": args.dtype, "params": n_params,
        "adapter_params": sum(v.numel() for v in state.values()),
        "targets": list(model.target_modules or ()), "batch": args.batch,
        "microbatch": microbatch, "steps": steps, "warmup": args.warmup,
        "build_s": build_s, "loss": losses, **_peak(), **_clean_imports(),
    }  # fmt: skip
    if args.mode == "pair":
        ratios = [d / n for d, n in zip(times["dp"], times["nonprivate"], strict=True)]
        row.update(
            s_steps=times,
            s_nonprivate=statistics.median(times["nonprivate"]),
            s_dp=statistics.median(times["dp"]),
            dp_ratio=statistics.median(ratios),
            dp_ratios=ratios,
        )
    else:
        row.update(s_steps=times[args.mode], s_per_step=statistics.median(times[args.mode]))
    return row


def _lora_state(shape: str, tokenizer: Any) -> dict[str, Any]:
    """The LoRA state of `shape` (names, shapes exactly as a site's), random float32 values;
    the base lives on the meta device, so no weights are allocated."""
    import torch
    from transformers import AutoModelForCausalLM

    from gossipmed.learn.adapters import trainable_names, wrap_with_adapter
    from gossipmed.learn.config import AdapterConfig

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(_config(shape, tokenizer))
    wrapped = wrap_with_adapter(base, AdapterConfig(kind="lora"))
    params = dict(wrapped.named_parameters())
    gen = torch.Generator().manual_seed(0)
    return {n: torch.randn(params[n].shape, generator=gen) for n in trainable_names(wrapped)}


def worker_envelope(args: argparse.Namespace) -> list[dict[str, Any]]:
    from gossipmed.wire.tensors import encode_payload, schema_of

    tok = _tokenizer(Path(args.tokenizer))
    have_nacl = _have("nacl")
    rows = []
    for shape in args.shape_list:
        state = _lora_state(shape, tok)
        row: dict[str, Any] = {
            "kind": "envelope", "shape": shape,
            "adapter_params": sum(v.numel() for v in state.values()),
            "payload_bytes": len(encode_payload(state, epsilon=0.0)),
        }  # fmt: skip
        if have_nacl:
            row.update(_seal_open(state, schema_of(state)))
        else:
            row["seal_open"] = "skipped: pynacl not installed"
        rows.append({**row, **_clean_imports()})
    return rows


def _sealers(max_bytes: int) -> tuple[Any, Any]:
    from gossipmed.consortium.crypto import derive_identity
    from gossipmed.consortium.member import Member
    from gossipmed.consortium.roster import Roster
    from gossipmed.wire.envelope import EnvelopeSealer

    ids = {n: derive_identity(b"bench-scale-secret-0123456789", n) for n in ("a", "b")}
    members = tuple(
        Member(name=n, peer_id=i.peer_id, sign_key=i.sign_key, box_key=i.box_key)
        for n, i in ids.items()
    )
    roster = Roster(members=members, edges=(("a", "b"),))
    return tuple(
        EnvelopeSealer(identity=ids[n], roster=roster, max_bytes=max_bytes) for n in ("a", "b")
    )  # type: ignore[return-value]


def _seal_open(state: dict[str, Any], schema: Any, repeats: int = 3) -> dict[str, Any]:
    from gossipmed.wire.limits import update_size_limit

    limit = update_size_limit(schema)  # what a site accepts from a neighbour with this adapter
    out: dict[str, Any] = {"update_limit_bytes": limit}
    a, b = _sealers(limit)
    seal_s, open_s = [], []
    for r in range(1, repeats + 1):
        start = time.perf_counter()
        env = a.seal_many(update_tensors=state, round=r, step=0, recipients=["b"], epsilon=0)
        seal_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        b.open(env["b"], expected_schema=schema)
        open_s.append(time.perf_counter() - start)
    out.update(
        envelope_bytes=len(env["b"]),
        seal_s=statistics.median(seal_s),
        open_s=statistics.median(open_s),
    )
    return out


def worker_sim(args: argparse.Namespace) -> dict[str, Any]:
    from gossipmed.learn.config import (
        AdapterConfig,
        ComputeConfig,
        DataConfig,
        DPConfig,
        LearningConfig,
        TrainConfig,
    )  # fmt: skip
    from gossipmed.learn.train import build_site_learners
    from gossipmed.mixing.rules import weighted_average
    from gossipmed.privacy.randomness import RandomSource

    dp = _have("opacus")
    rounds, local_steps = 2, 2
    model, build_s = _adapter_model(args, args.sim_shape)
    config = LearningConfig(
        data=DataConfig(
            dataset="notes", n_sites=4, partition="natural", max_train_examples=2000, eval_size=21
        ),
        adapter=AdapterConfig(kind="lora"),
        dp=DPConfig(enabled=dp, epsilon=8.0, planned_steps=rounds * local_steps),
        train=TrainConfig(batch_size=16, steps_per_round=local_steps, microbatch=args.microbatch),
        compute=ComputeConfig(device=args.device, base_dtype=args.dtype),
    )
    # seeded: a benchmark protects nobody, and its numbers should repeat
    setup = build_site_learners(config, randomness=RandomSource.seeded(0), model=model)
    sites = setup.learners
    n = len(sites)
    records = []
    for r in range(rounds):
        start = time.perf_counter()
        for site in sites:
            site.train_round(steps=local_steps)
        trained = time.perf_counter()
        states = {s.name: s.get_state() for s in sites}
        for i, site in enumerate(sites):  # ring, Metropolis weights 1/3
            group = {sites[j].name: states[sites[j].name] for j in (i - 1, i, (i + 1) % n)}
            site.set_state(weighted_average(group, {k: 1 / 3 for k in group}))
        mixed = time.perf_counter()
        evals = [s.evaluate() for s in sites]
        records.append({
            "round": r + 1, "train_s": trained - start, "mix_s": mixed - trained,
            "eval_s": time.perf_counter() - mixed,
            "accuracy": [e.accuracy for e in evals], "loss": [e.loss for e in evals],
            "epsilon": [s.epsilon if dp else None for s in sites],
        })  # fmt: skip
    return {
        "kind": "sim", "shape": args.sim_shape, "sites": n, "rounds": rounds,
        "local_steps": local_steps, "batch": 16, "eval_examples": len(setup.eval_set.targets),
        "dp": dp,
        "note": None if dp else "opacus not installed: simulation ran without DP",
        "device": str(model.device), "dtype": args.dtype, "microbatch": sites[0].microbatch,
        "build_s": build_s, "records": records, **_peak(), **_clean_imports(),
    }  # fmt: skip


def _run_child(argv: list[str], timeout: float) -> list[dict[str, Any]]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:  # one slow row must not lose the others
        return [{"kind": "error", "argv": argv, "rc": None, "stderr": [f"timeout {timeout} s"]}]
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not rows:
        tail = proc.stderr.strip().splitlines()[-3:]
        return [{"kind": "error", "argv": argv, "rc": proc.returncode, "stderr": tail}]
    return rows


def _merge_steps(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """One row per (shape, mode): the median of every timed step of its repeats, the largest
    peak memory."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r["kind"] != "step" or r["mode"] == "pair":
            continue
        key = (r["shape"], r["mode"])
        if key not in merged:
            merged[key] = {**r, "s_steps": list(r["s_steps"]), "repeats": 1}
            continue
        m = merged[key]
        m["s_steps"] += r["s_steps"]
        m["repeats"] += 1
        for k in ("peak_rss_gb", "peak_cuda_gb"):
            if k in r:
                m[k] = max(m[k], r[k])
    for m in merged.values():
        m["s_per_step"] = statistics.median(m["s_steps"])
    return merged


def _table(rows: list[dict[str, Any]]) -> str:
    steps = _merge_steps(rows)
    pairs = {r["shape"]: r for r in rows if r["kind"] == "step" and r["mode"] == "pair"}
    for shape, pair in pairs.items():  # the fair timing, where there is one
        for mode, key in (("nonprivate", "s_nonprivate"), ("dp", "s_dp")):
            if (shape, mode) in steps:
                steps[(shape, mode)] = {**steps[(shape, mode)], "s_per_step": pair[key]}
    env = {r["shape"]: r for r in rows if r["kind"] == "envelope"}
    lines = [
        "| shape | params | micro-batch | non-private s/step | DP s/step | DP/non-private "
        "| peak RSS non-private / DP (GB) | adapter params | envelope MiB | seal / open s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in dict.fromkeys(s for s, _ in steps):
        npv, dp = steps.get((shape, "nonprivate")), steps.get((shape, "dp"))
        e = env.get(shape, {})
        ratio = f"{dp['s_per_step'] / npv['s_per_step']:.2f}" if npv and dp else "-"
        if shape in pairs:
            ratio = f"{pairs[shape]['dp_ratio']:.2f} (paired)"
        mem = "/".join(f"{r['peak_rss_gb']:.2f}" if r else "-" for r in (npv, dp))
        if any(r and "peak_cuda_gb" in r for r in (npv, dp)):
            mem += (
                " (CUDA "
                + "/".join(f"{r['peak_cuda_gb']:.2f}" if r else "-" for r in (npv, dp))
                + ")"
            )
        size = e.get("envelope_bytes", e.get("payload_bytes"))
        seal = f"{e['seal_s']:.3f} / {e['open_s']:.3f}" if "seal_s" in e else "-"
        ref = npv or dp
        assert ref is not None
        lines.append(
            f"| {shape} | {ref['params'] / 1e6:.0f}M | {ref['microbatch']} | "
            f"{npv['s_per_step'] if npv else float('nan'):.2f} | "
            f"{dp['s_per_step'] if dp else float('nan'):.2f} | {ratio} | {mem} | "
            f"{ref['adapter_params']:,} | {size / 2**20 if size else float('nan'):.2f} | {seal} |"
        )
    for shape, e in env.items():
        if not any(s == shape for s, _ in steps):
            size = e.get("envelope_bytes", e.get("payload_bytes"))
            seal = f"{e['seal_s']:.3f} / {e['open_s']:.3f}" if "seal_s" in e else "-"
            lines.append(
                f"| {shape} | (schema only) | - | - | - | - | - | {e['adapter_params']:,} | "
                f"{size / 2**20:.2f} | {seal} |"
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help="comma list, or 'all'")
    p.add_argument("--envelope-shapes", default=",".join(ALL_SHAPES), help="comma list")
    p.add_argument("--sim-shape", default=SIM_SHAPE, help="base of the gossip simulation")
    p.add_argument(
        "--only",
        default="step,envelope,sim",
        help="which parts: step,envelope,sim; or 'sites': cost as the consortium grows "
        "(scripts/bench_scale_sites.py; its options after --)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps, auto")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--batch", type=int, default=128, help="logical batch of a step row")
    p.add_argument("--microbatch", type=int, default=None, help="default: auto (the default)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per row")
    p.add_argument("--big-steps", type=int, default=1, help="timed steps for >= 1B parameters")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument(
        "--repeat", type=int, default=1, help="run each step row this many times, alternating"
    )
    p.add_argument(
        "--paired",
        action="store_true",
        help="also time DP and non-private steps alternating in one process (fair ratio on a "
        "shared machine); the table then takes its times from there",
    )
    p.add_argument("--tokenizer", default=None, help="folder with the tiny base's tokenizer")
    p.add_argument("--timeout", type=float, default=3600.0, help="per subprocess, seconds")
    p.add_argument("--out", help="append the JSON rows to this file")
    p.add_argument("--save", metavar="DIR", help="only save a random-init --shape folder to DIR")
    p.add_argument("--worker", choices=("step", "envelope", "sim"), help=argparse.SUPPRESS)
    p.add_argument("--shape", help="with --save: the shape to save")
    p.add_argument("--mode", choices=("dp", "nonprivate", "pair"), help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.only == "sites":
        sites = ROOT / "scripts" / "bench_scale_sites.py"
        return subprocess.call([sys.executable, str(sites), *rest])
    args.tokenizer = args.tokenizer or str(_default_tokenizer())
    shapes = list(ALL_SHAPES) if args.shapes == "all" else args.shapes.split(",")
    args.shape_list = [s for s in args.envelope_shapes.split(",") if s]
    for s in [*shapes, *args.shape_list, args.sim_shape]:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; known: {', '.join(SHAPES)}")
    if args.save:
        if args.shape not in SHAPES:
            p.error("--save needs --shape (one of: " + ", ".join(SHAPES) + ")")
        print(save_folder(args.shape, Path(args.tokenizer), Path(args.save)))
        return 0
    if args.worker:
        work = {"step": worker_step, "envelope": worker_envelope, "sim": worker_sim}
        result = work[args.worker](args)
        for row in result if isinstance(result, list) else [result]:
            print(json.dumps(row), flush=True)
        return 0

    from gossipmed.errors import ConfigError
    from gossipmed.learn.compute import resolve_device

    try:
        resolve_device(args.device)  # no GPU: one line, before any subprocess
    except ConfigError as exc:
        sys.exit(f"bench_scale: {exc}")
    common = ["--device", args.device, "--dtype", args.dtype, "--tokenizer", args.tokenizer]
    common += ["--sim-shape", args.sim_shape]
    if args.microbatch:
        common += ["--microbatch", str(args.microbatch)]
    parts = args.only.split(",")
    rows: list[dict[str, Any]] = []
    header = {
        "kind": "host", "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "load": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": args.device, "dtype": args.dtype,
    }  # fmt: skip
    print(json.dumps(header), flush=True)
    plan: list[list[str]] = []
    if "step" in parts:
        for shape in shapes:
            for _ in range(args.repeat):  # alternating, so load drift hits both modes
                for mode in ("nonprivate", "dp"):
                    plan.append(["--worker", "step", "--shape", shape, "--mode", mode])
            if args.paired:
                plan.append(["--worker", "step", "--shape", shape, "--mode", "pair"])
    if "envelope" in parts:
        plan.append(["--worker", "envelope", "--envelope-shapes", ",".join(args.shape_list)])
    if "sim" in parts:
        plan.append(["--worker", "sim"])
    for argv in plan:
        extra = ["--batch", str(args.batch), "--steps", str(args.steps)]
        extra += ["--big-steps", str(args.big_steps), "--warmup", str(args.warmup)]
        for row in _run_child([*argv, *common, *extra], args.timeout):
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            for row in [header, *rows]:
                fh.write(json.dumps(row) + "\n")
    if any(r["kind"] in ("step", "envelope") for r in rows):
        print(_table(rows))
    for r in rows:
        if r["kind"] == "sim":
            for rec in r["records"]:
                acc = sum(rec["accuracy"]) / len(rec["accuracy"])
                print(
                    f"sim {r['shape']} round {rec['round']}: train {rec['train_s']:.1f} s, "
                    f"mix {rec['mix_s']:.2f} s, eval {rec['eval_s']:.1f} s, mean acc {acc:.3f}"
                    f" ({'DP' if r['dp'] else 'non-private'}), peak RSS {r['peak_rss_gb']:.2f} GB"
                )
    return 1 if any(r["kind"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
