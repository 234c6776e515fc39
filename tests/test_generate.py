"""`gossipmed generate`: greedy decoding is an argmax loop, sampling repeats from its seed, and
reading a site's checkpoint leaves the site folder and its privacy ledger untouched."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from gossipmed.errors import ConfigError
from gossipmed.learn.config import AdapterConfig, DataConfig
from gossipmed.learn.decoding import MAX_NEW_TOKENS, Decoding
from gossipmed.learn.generate import (
    generate,
    generate_ids,
    render_prompt,
    task_encoder,
)
from gossipmed.learn.model import AdapterModel
from node.cli import main

PROMPT = "chest pain radiating to the left arm"


def _model(base: Path, kind: str = "lora", **adapter: Any) -> AdapterModel:
    """A toy model whose adapter is far from its zero-update init, so it changes outputs."""
    model = AdapterModel.from_pretrained(base, AdapterConfig(kind=kind, rank=2, **adapter))  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(3)
    state = model.read_state()
    model.load_state({k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in state.items()})
    return model


@pytest.fixture(scope="module")
def lora(tiny_base: Path) -> AdapterModel:
    return _model(tiny_base)


@pytest.fixture(scope="module")
def prompt_ids(lora: AdapterModel) -> list[int]:
    return render_prompt(task_encoder(lora.tokenizer, DataConfig(dataset="notes")), PROMPT)


def _argmax_loop(module: torch.nn.Module, ids: list[int], n: int, stop: int) -> list[int]:
    ids, new = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            token = int(module(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            new.append(token)
            ids.append(token)
            if token == stop:
                break
    return new


def test_greedy_generation_repeats_and_is_the_argmax_loop(
    lora: AdapterModel, prompt_ids: list[int]
) -> None:
    decoding = Decoding(max_new_tokens=12)
    first = generate(lora.module, lora.tokenizer, prompt_ids, decoding=decoding)
    second = generate(lora.module, lora.tokenizer, prompt_ids, decoding=decoding)
    eos = int(lora.tokenizer.eos_token_id)  # type: ignore[attr-defined]
    assert first.new_ids == second.new_ids and first.seed is None
    assert list(first.new_ids) == _argmax_loop(lora.module, prompt_ids, 12, eos)
    assert first.prompt_ids == tuple(prompt_ids) and prompt_ids[0] == lora.tokenizer.bos_token_id  # type: ignore[attr-defined]


def test_the_prompt_is_rendered_with_the_task_template(lora: AdapterModel) -> None:
    """A label task's prompt ends with its label prefix, exactly as training renders it."""
    encoder = task_encoder(lora.tokenizer, DataConfig(dataset="notes"))
    ids = render_prompt(encoder, PROMPT)
    tail = lora.tokenizer(f"\n{encoder.dataset.label_prefix}", add_special_tokens=False)  # type: ignore[operator]
    assert ids[-len(tail["input_ids"]) :] == tail["input_ids"]


def test_sampling_repeats_given_its_seed(lora: AdapterModel, prompt_ids: list[int]) -> None:
    def sample(seed: int, **kw: float) -> tuple[int, ...]:
        decoding = Decoding(max_new_tokens=16, sample=True, seed=seed, **kw)  # type: ignore[arg-type]
        return generate(lora.module, lora.tokenizer, prompt_ids, decoding=decoding).new_ids

    assert sample(7) == sample(7)
    assert sample(7, temperature=0.7, top_p=0.9) == sample(7, temperature=0.7, top_p=0.9)
    assert len({sample(s) for s in (7, 8, 9)}) > 1  # the seed is what drives the draws
    unseeded = generate(
        lora.module, lora.tokenizer, prompt_ids, decoding=Decoding(max_new_tokens=4, sample=True)
    )
    assert unseeded.seed is not None  # reported, so the draw can be repeated


def test_a_tiny_top_p_is_greedy(lora: AdapterModel, prompt_ids: list[int]) -> None:
    greedy = generate(lora.module, lora.tokenizer, prompt_ids, decoding=Decoding(max_new_tokens=8))
    nucleus = Decoding(max_new_tokens=8, sample=True, seed=1, top_p=1e-6)
    assert generate(lora.module, lora.tokenizer, prompt_ids, decoding=nucleus).new_ids == (
        greedy.new_ids
    )


def test_decoding_stops_at_a_terminator_and_at_the_window(
    lora: AdapterModel, prompt_ids: list[int]
) -> None:
    first = generate_ids(lora.module, prompt_ids, decoding=Decoding(max_new_tokens=5), stop_ids=())
    assert first[1] == "max_new_tokens" and len(first[0]) == 5
    stopped = generate_ids(
        lora.module, prompt_ids, decoding=Decoding(max_new_tokens=5), stop_ids={first[0][2]}
    )
    assert stopped[0] == first[0][: first[0].index(first[0][2]) + 1]
    assert stopped[1] == "terminator"
    window = lora.module.config.max_position_embeddings  # type: ignore[union-attr]
    near_end = [prompt_ids[0]] * (window - 2)
    capped = generate_ids(lora.module, near_end, decoding=Decoding(max_new_tokens=5), stop_ids=())
    assert capped[1] == "context" and len(capped[0]) == 2
    with pytest.raises(ConfigError, match="reads at most"):
        generate_ids(lora.module, [1] * window, decoding=Decoding(), stop_ids=())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"max_new_tokens": MAX_NEW_TOKENS + 1},
        {"seed": 3},  # a seed without --sample means nothing: refused, not ignored
        {"temperature": 0.5},
        {"sample": True, "temperature": 0.0},
        {"sample": True, "top_p": 0.0},
        {"sample": True, "seed": -1},
    ],
)
def test_bad_decoding_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Decoding(**kwargs)


def _cli_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main([*argv, "--json"]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "prompt", "full"])
def test_generate_loads_a_saved_adapter_folder(
    kind: str, tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model(tiny_base, kind)
    folder = model.save(tmp_path / kind)
    prompt = render_prompt(task_encoder(model.tokenizer, DataConfig(dataset="notes")), PROMPT)
    expected = generate(model.module, model.tokenizer, prompt, decoding=Decoding(max_new_tokens=6))
    argv = ["generate", "--adapter", str(folder), "--dataset", "notes", "--prompt", PROMPT]
    doc = _cli_json([*argv, "--base-model", str(tiny_base), "--max-new-tokens", "6"], capsys)
    assert doc["tokens"] == list(expected.new_ids) and doc["kind"] == kind
    assert doc["decoding"] == "greedy" and doc["prompt_tokens"] == len(prompt)


def test_generate_refuses_an_adapter_without_its_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--adapter", str(tmp_path), "--prompt", "x"]) == 2
    assert "--dataset" in capsys.readouterr().err


# --- --site: read-only --------------------------------------------------------------------

_WATCH: dict[str, Any] = {"on": False, "opens": []}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _WATCH["on"] and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        _WATCH["opens"].append((os.fsdecode(args[0]), flags))
    elif _WATCH["on"] and event in ("os.mkdir", "os.rename", "os.remove", "os.chmod"):
        _WATCH["opens"].append((os.fsdecode(args[0]), _WRITE_FLAGS))


sys.addaudithook(_audit)  # inert unless a test turns it on


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file and folder with its bytes, mtime and mode."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = Path(root) / name
            st = path.stat()
            data = path.read_bytes() if path.is_file() else b""
            out[str(path.relative_to(folder))] = (data, st.st_mtime_ns, st.st_mode)
    return out


def _site(tmp_path: Path, base: Path) -> tuple[Path, AdapterModel]:
    """A site folder as a daemon leaves it after round 4: FFA-LoRA under a shared seed, a
    checkpoint and a privacy ledger."""
    from gossipmed.consortium.setup import create_site
    from gossipmed.storage.peer_state import save_checkpoint

    site = tmp_path / "alpha"
    create_site(site, name="alpha", listen=["/ip4/127.0.0.1/tcp/0"])
    text = (site / "site.toml").read_text(encoding="utf-8")
    text = text.replace('consortium = ""', 'consortium = "../consortium.toml"')
    with open(site / "site.toml", "w", encoding="utf-8") as f:
        f.write(
            text + f'[daemon]\nbase_model = "{base}"\nsite_index = 1\n'
            '[data]\ndataset = "notes"\nn_sites = 3\n'
            '[adapter]\nkind = "ffa_lora"\nrank = 2\nshared_seed = 77\n'
            "[dp]\nepsilon = 8.0\n"
        )
    model = _model(base, "ffa_lora", shared_seed=77)
    save_checkpoint(
        site / "state",
        site="alpha",
        round=4,
        epsilon=1.5,
        state=model.read_state(),
        replay_state=None,
        components={},
    )
    (site / "privacy").mkdir(mode=0o700)
    (site / "privacy" / "ledger.json").write_text('{"v": 1}\n')
    return site, model


@pytest.mark.slow
def test_generate_from_a_site_reads_its_checkpoint_and_writes_nothing(
    tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site, model = _site(tmp_path, tiny_base)
    prompt = render_prompt(task_encoder(model.tokenizer, DataConfig(dataset="notes")), PROMPT)
    expected = generate(model.module, model.tokenizer, prompt, decoding=Decoding(max_new_tokens=6))
    before = _snapshot(site)
    _WATCH.update(on=True, opens=[])
    try:
        doc = _cli_json(
            ["generate", "--site", str(site), "--prompt", PROMPT, "--max-new-tokens", "6"], capsys
        )
    finally:
        _WATCH["on"] = False
    opens = _WATCH["opens"]
    assert doc["tokens"] == list(expected.new_ids)  # the checkpoint, on A from seed 77
    assert doc["round"] == 4 and doc["kind"] == "ffa_lora"
    assert _snapshot(site) == before  # bytes, mtimes and modes
    inside = [(p, f) for p, f in opens if Path(p).resolve().is_relative_to(site.resolve())]
    assert not [p for p, f in inside if f & _WRITE_FLAGS], "wrote in the site folder"
    assert not [p for p, _ in inside if "privacy" in Path(p).parts], "opened the ledger folder"
    assert any(p.endswith("state.safetensors") for p, _ in inside)  # the watch does see reads


def test_generate_from_a_site_without_a_checkpoint_says_so(
    tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site, _ = _site(tmp_path, tiny_base)
    for name in ("state.safetensors", "checkpoint.json"):
        (site / "state" / name).unlink()
    assert main(["generate", "--site", str(site), "--prompt", "x"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
