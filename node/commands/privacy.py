"""`gossipmed privacy`: epsilon of a DP-SGD schedule, or the noise needed for a target epsilon."""

from __future__ import annotations

import argparse

from gossipmed.strict_json import dumps


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "privacy",
        help="privacy accounting: epsilon for a noise level, or noise for a target epsilon",
        description=(
            "Opacus RDP/PRV accounting for Poisson-subsampled Gaussian DP-SGD. Give --noise to "
            "get epsilon, or --target-epsilon to get the smallest noise multiplier reaching it."
        ),
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--noise", type=float, help="noise multiplier (std / clip norm)")
    what.add_argument("--target-epsilon", type=float, help="calibrate noise to this epsilon")
    p.add_argument("--sample-rate", type=float, required=True, help="Poisson sampling rate q")
    p.add_argument("--steps", type=int, required=True, help="number of DP-SGD steps")
    p.add_argument("--delta", type=float, default=1e-5, help="target delta (default 1e-5)")
    p.add_argument("--accountant", choices=("rdp", "prv"), default="rdp")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gossipmed.privacy.dp import calibrate_noise, epsilon_for

    common = {
        "sample_rate": args.sample_rate,
        "steps": args.steps,
        "delta": args.delta,
        "accountant": args.accountant,
    }
    if args.noise is not None:
        eps = epsilon_for(noise_multiplier=args.noise, **common)
        result = {"epsilon": eps, "noise_multiplier": args.noise, **common}
        text = f"epsilon = {eps:.4f} (delta {args.delta:g}, {args.accountant})"
    else:
        sigma = calibrate_noise(target_epsilon=args.target_epsilon, **common)
        result = {"noise_multiplier": sigma, "target_epsilon": args.target_epsilon, **common}
        text = f"noise multiplier = {sigma:.4f} for epsilon {args.target_epsilon:g}"
    print(dumps(result) if args.json else text)
    return 0
