"""The commented site.toml that `gossipmed init` writes: every table the daemon reads, each
key at its default, so the file runs as soon as the consortium file is in place and every
setting a hospital may need to change is in front of it with what it means.

The values here are the defaults (a test holds them equal), so uncommenting nothing changes
nothing; keys that have no useful default (user data paths) are commented out.
"""

from __future__ import annotations

from gossipmed.consortium.site import SiteConfig
from gossipmed.toml_writer import toml_value

CONSORTIUM_DEFAULT = "consortium.toml"

TABLES = """
[daemon]
# Rounds to run, then exit 0; 0 runs until stopped (SIGINT/SIGTERM).
rounds = 0
# Which partition of a built-in dataset is this site's (0 .. [data] n_sites - 1); give every
# site of a trial consortium its own. Ignored for your own data ([data] dataset = "user").
site_index = 0
# Local Hugging Face model folder (relative to this folder or absolute); empty: the built-in
# tiny clinical base, built once into ~/.cache/gossipmed. Every site must use the same base.
base_model = ""
# Evaluate on the held-out set every N rounds.
eval_every = 1
# The status endpoint and dashboard port on 127.0.0.1; 0 picks a free one (see
# `gossipmed status --site . --url`).
control_port = 0
# Seconds to wait for one dial to a neighbour.
dial_timeout_s = 5.0

[gossip]
# How long a round waits for its neighbours' updates before mixing what arrived.
round_timeout_s = 30.0
# The mixing rule, the update codec and drift correction are this site's own choices; the
# defaults suit most consortia (`gossipmed simulate --help` lists the alternatives), e.g.
# aggregation = { rule = "cosine-clipped", min_cosine = 0.1 }
# codec = { name = "topk", fraction = 0.01 }

[data]
# A built-in dataset (icd10, heart, notes) to try the consortium, or "user" for your own
# records with `path` (a .jsonl/.txt file or a folder of them, relative to this folder).
dataset = "icd10"
# dataset = "user"
# path = "data/notes.jsonl"
# Built-in datasets only: how many sites split them (the consortium's size).
n_sites = 4
# Held-out examples scored at each evaluation.
eval_size = 300
# Tokens per example (prompt + label).
max_length = 64

[adapter]
# What is trained and shared: lora (default), ffa_lora, prompt or full.
kind = "lora"
rank = 8

[dp]
# Differential privacy of every update this site sends (DP-SGD). The budget is the site's
# total over all rounds; the daemon refuses to train past it (privacy/ledger.json).
enabled = true
epsilon = 8.0
delta = 1e-05
# The steps the calibrated noise must last for (rounds x [train] steps_per_round).
planned_steps = 400

[train]
# Local DP-SGD steps per round, the expected (Poisson) batch and the learning rate.
steps_per_round = 20
batch_size = 128
lr = 0.02

[compute]
# auto (the first GPU, else the CPU), cpu, cuda, cuda:N or mps; the dtype of the frozen base.
device = "auto"
base_dtype = "float32"
"""


def site_template(config: SiteConfig) -> str:
    """The whole site.toml of a new site, identity lines first."""
    listen = ", ".join(toml_value(a) for a in config.listen)
    consortium = config.consortium or CONSORTIUM_DEFAULT
    return f"""# gossipmed site configuration of {config.name!r} (paths relative to this folder).
# Unknown keys are errors, so a misspelt privacy setting never falls back to a default.
name = {toml_value(config.name)}
# Where this site listens; also the addresses its card advertises to the other sites.
listen = [{listen}]
# The consortium file from whoever builds it (`gossipmed consortium build`): put it here.
consortium = {toml_value(consortium)}
# This site's identity (0600; never share these: the card holds the public halves).
sign_key_file = {toml_value(config.sign_key_file)}
box_key_file = {toml_value(config.box_key_file)}
# Pin the consortium file's content hash (hex, from `gossipmed consortium show`): another
# file is then refused. Empty: no pin.
consortium_hash = {toml_value(config.consortium_hash)}
# The audit log of refused messages and rounds (JSON lines).
audit_log = {toml_value(config.audit_log)}
{TABLES}"""
