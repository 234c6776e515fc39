"""`gossipmed generate`: answer one prompt with a trained adapter or a site's checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gossipmed.learn.config import DATASETS


def register(sub: Any) -> None:
    from gossipmed.learn.decoding import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS

    p = sub.add_parser(
        "generate",
        help="answer a prompt with a trained adapter (or a site's latest checkpoint)",
        description=(
            "Render --prompt with the task's template, as training rendered its prompts, and "
            "decode the answer until the model emits its terminator (end of sequence or end "
            "of turn) or --max-new-tokens. Greedy by default; --sample draws tokens, "
            "reproducibly given --seed. --adapter takes a saved adapter folder (PEFT, or a "
            "full-model folder for adapter kind full) and --dataset names its task. --site "
            "takes a site folder: the model is rebuilt from its site.toml (adapter kind, "
            "shared seed, base) and its latest checkpoint; nothing in the folder is written "
            "and its privacy ledger is never opened, so a running daemon is not disturbed."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", type=Path, metavar="DIR", help="a saved adapter folder")
    source.add_argument("--site", type=Path, metavar="DIR", help="a site folder with a checkpoint")
    p.add_argument("--prompt", required=True, help="the question or instruction")
    task = p.add_argument_group("the task (with --adapter; --site reads its site.toml)")
    task.add_argument("--dataset", choices=DATASETS, help="the task the adapter was trained on")
    task.add_argument("--data-path", help="user data: the .jsonl/.txt file or folder")
    task.add_argument("--max-length", type=int, help="data.max_length of training (default 64)")
    task.add_argument(
        "--base-model",
        type=Path,
        help="base model folder (default: the one the adapter was saved from, else the "
        "built-in tiny base)",
    )
    dec = p.add_argument_group("decoding")
    dec.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"stop after this many tokens (default {DEFAULT_MAX_NEW_TOKENS}, "
        f"at most {MAX_NEW_TOKENS})",
    )
    dec.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    dec.add_argument("--seed", type=int, help="with --sample: the seed (default: a fresh one)")
    dec.add_argument("--temperature", type=float, help="with --sample: softmax temperature")
    dec.add_argument("--top-p", type=float, help="with --sample: nucleus mass kept (0, 1]")
    p.add_argument(
        "--device",
        help="auto, cpu, cuda, cuda:N or mps (default: the site's [compute], else auto)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _decoding(args: argparse.Namespace) -> Any:
    from gossipmed.learn.decoding import Decoding

    extra: dict[str, Any] = {}
    if args.temperature is not None:
        extra["temperature"] = args.temperature
    if args.top_p is not None:
        extra["top_p"] = args.top_p
    return Decoding(max_new_tokens=args.max_new_tokens, sample=args.sample, seed=args.seed, **extra)


def _from_site(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """(model, task encoder, what was loaded), reading the site folder and nothing else."""
    import dataclasses

    from gossipmed.errors import ConfigError
    from gossipmed.learn.config import ComputeConfig
    from gossipmed.learn.generate import model_from_state, task_encoder
    from gossipmed.storage.peer_state import has_checkpoint, read_checkpoint
    from node.daemon.config import load_daemon_settings

    for flag in ("dataset", "data_path", "max_length", "base_model"):
        if getattr(args, flag) is not None:
            name = "--" + flag.replace("_", "-")
            raise ConfigError(f"{name} is for --adapter; with --site the task is site.toml's")
    settings = load_daemon_settings(args.site)
    if settings.daemon.problem != "lm":
        problem = settings.daemon.problem
        raise ConfigError(f"{args.site} trains the {problem!r} problem, not a language model")
    if not has_checkpoint(settings.state_dir):
        raise ConfigError(f"{args.site} has no checkpoint yet: it has not completed a round")
    checkpoint = read_checkpoint(settings.state_dir, site=settings.site.config.name)
    learning = settings.learning
    if args.device is not None:
        compute = ComputeConfig(device=args.device, base_dtype=learning.compute.base_dtype)
        learning = dataclasses.replace(learning, compute=compute)
    loaded = model_from_state(learning, checkpoint.state, progress=not args.json)
    encoder = task_encoder(loaded.tokenizer, learning.data)
    return loaded, encoder, {"site": str(args.site), "round": checkpoint.round}


def _from_adapter(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    from gossipmed.errors import ConfigError
    from gossipmed.learn.config import ComputeConfig, DataConfig
    from gossipmed.learn.generate import base_of_adapter, load_model_folder, task_encoder

    if args.dataset is None:
        raise ConfigError(
            "--adapter needs --dataset (and --data-path for user data): the task whose "
            "template renders the prompt"
        )
    data = DataConfig(
        dataset=args.dataset,
        path=args.data_path,
        **({"max_length": args.max_length} if args.max_length is not None else {}),
    )
    base = args.base_model or base_of_adapter(args.adapter)
    if base is None:
        from gossipmed.learn.base_model import ensure_base_model

        base = ensure_base_model(progress=not args.json)
    compute = ComputeConfig(device=args.device or "auto")
    loaded = load_model_folder(args.adapter, base=base, compute=compute)
    encoder = task_encoder(loaded.tokenizer, data)
    return loaded, encoder, {"adapter": str(args.adapter), "base_model": str(base)}


def run(args: argparse.Namespace) -> int:
    from gossipmed.learn.generate import generate, render_prompt
    from gossipmed.strict_json import dumps

    decoding = _decoding(args)  # bad flags fail before any model loads
    loaded, encoder, source = _from_site(args) if args.site else _from_adapter(args)
    result = generate(
        loaded.module,
        loaded.tokenizer,
        # an instruction prompt is cut to leave room for the answer, never below half the
        # task's max_length (a long answer may still run on into the model's window)
        render_prompt(
            encoder, args.prompt, reserve=min(decoding.max_new_tokens, encoder.max_length // 2)
        ),
        decoding=decoding,
        device=loaded.device,
        encoder=encoder,
    )
    if args.json:
        doc = {
            **source,
            "kind": loaded.kind,
            "prompt": args.prompt,
            "text": result.text,
            "tokens": list(result.new_ids),
            "prompt_tokens": len(result.prompt_ids),
            "new_tokens": len(result.new_ids),
            "stopped": result.stopped,
            "decoding": "sample" if decoding.sample else "greedy",
            "seed": result.seed,
            "temperature": decoding.temperature if decoding.sample else None,
            "top_p": decoding.top_p if decoding.sample else None,
            "max_new_tokens": decoding.max_new_tokens,
            "seconds": result.seconds,
        }
        print(dumps(doc))
        return 0
    print(result.text.strip())
    how = "greedy" if result.seed is None else f"sampled, seed {result.seed}"
    stop = {"terminator": "at the terminator", "context": "at the model's context window"}
    sys.stderr.write(
        f"({len(result.new_ids)} tokens, stopped "
        f"{stop.get(result.stopped, f'at --max-new-tokens {decoding.max_new_tokens}')}, "
        f"{how}, {result.seconds:.1f} s)\n"
    )
    return 0
