"""The Python API page: mkdocstrings renders the objects declared public here, and only those.

PUBLIC_API is the one list of what a library user may import and rely on; anything else is
internal and may change without notice. tests/test_docs_reference.py checks every entry
imports.
"""

from __future__ import annotations

PUBLIC_API: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Configuration",
        (
            "gossipmed.learn.config.LearningConfig",
            "gossipmed.learn.config.load_learning_config",
            "node.sim.config.SimConfig",
            "node.sim.config.sim_config_from_mapping",
            "node.daemon.config.load_daemon_settings",
        ),
    ),
    ("Running a simulation", ("node.sim.run.run_simulation",)),
    (
        "Data",
        (
            "gossipmed.learn.datasets.core.Example",
            "gossipmed.learn.datasets.core.TaskDataset",
            "gossipmed.learn.datasets.core.load_dataset",
        ),
    ),
    (
        "Learning",
        (
            "gossipmed.learn.learner.Learner",
            "gossipmed.learn.learner.TrainStats",
            "gossipmed.learn.learner.EvalStats",
        ),
    ),
    (
        "Privacy",
        (
            "gossipmed.privacy.dp.epsilon_for",
            "gossipmed.privacy.dp.calibrate_noise",
            "gossipmed.privacy.ledger.PrivacyLedger",
        ),
    ),
    ("Metrics", ("gossipmed.metrics.RoundRecord", "gossipmed.metrics.read_metrics")),
    (
        "Extending",
        (
            "gossipmed.registry.Registry",
            "gossipmed.choice.Spec",
            "gossipmed.choice.Choice",
        ),
    ),
    ("Errors", ("gossipmed.errors",)),
)


def public_names() -> list[str]:
    return [name for _title, names in PUBLIC_API for name in names]


def render_api_reference() -> str:
    lines = [
        "# Python API",
        "",
        "The supported Python surface, generated from the docstrings when the site is built. "
        "Everything not listed here is internal and may change between versions; the command "
        "line ([CLI reference](cli.md)) is the primary interface.",
        "",
    ]
    for title, names in PUBLIC_API:
        lines += [f"## {title}", ""]
        for name in names:
            lines += [f"::: {name}", "    options:", "      heading_level: 3", ""]
    return "\n".join(lines) + "\n"
