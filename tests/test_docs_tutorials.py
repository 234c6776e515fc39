"""The tutorials run as written (with small settings): each page's `bash` blocks execute in
order in a fresh folder, through Sybil (tests/docs_harness.py has the conventions). A new
executable page is one more entry in TUTORIALS."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from docs_harness import SYBIL, Block, run_page
from docs_support import ROOT

FIXTURES = ROOT / "tests" / "data" / "docs"
PLACEHOLDER = "replaces this placeholder"


@dataclass(frozen=True)
class Tutorial:
    page: str
    tiny_models: bool = False
    """Give the page the test suite's tiny model folders ($GOSSIPMED_TINY_LLAMA, ...)."""
    toy_base: bool = True
    """Give the page a seconds-to-train base folder as $GOSSIPMED_TOY_BASE."""
    marks: tuple[pytest.MarkDecorator, ...] = field(default=(pytest.mark.slow,))


TUTORIALS = (
    Tutorial("docs/tutorials/choose-a-topology.md"),
    Tutorial("docs/tutorials/three-hospitals.md"),
    Tutorial("docs/tutorials/bring-your-own-model.md", tiny_models=True),
)
TINY_ARCHITECTURES = {"GOSSIPMED_TINY_LLAMA": "llama", "GOSSIPMED_TINY_GPT2": "gpt2"}


def _environment(tutorial: Tutorial, request: pytest.FixtureRequest, tmp: Path) -> dict[str, str]:
    """The folders a page asks for by name; each is built only when the page uses it."""
    text = (ROOT / tutorial.page).read_text()
    tiny = {v: a for v, a in TINY_ARCHITECTURES.items() if tutorial.tiny_models and v in text}
    env: dict[str, str] = {}
    if tiny or (tutorial.toy_base and "GOSSIPMED_TOY_BASE" in text):
        base: Path = request.getfixturevalue("tiny_base")
        env["GOSSIPMED_TOY_BASE"] = str(base)
        from tiny_archs import build_tiny

        for variable, arch in tiny.items():
            env[variable] = str(build_tiny(arch, base, tmp / "models" / arch))
    return env


def _blocks(page: Path) -> list[Block]:
    return [example.parsed for example in SYBIL.parse(page)]


@pytest.mark.parametrize(
    "tutorial", [pytest.param(t, id=Path(t.page).stem, marks=t.marks) for t in TUTORIALS]
)
def test_tutorial_runs_as_written(
    tutorial: Tutorial, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    page = ROOT / tutorial.page
    if PLACEHOLDER in page.read_text():
        pytest.skip(f"{tutorial.page} is still a placeholder")
    assert any(not block.skipped for block in _blocks(page)), "no runnable bash block"
    env = _environment(tutorial, request, tmp_path)
    work = tmp_path / "work"
    run_page(page, workdir=work, extra_env=env)


def test_blocks_share_one_shell_and_skip_and_replace_apply(tmp_path: Path) -> None:
    page = FIXTURES / "shell_page.md"
    assert [b.skipped for b in _blocks(page)] == [False, False, False, True, False, False]
    log = run_page(page, workdir=tmp_path / "w", extra_env={})
    assert len(log) == 5  # the skipped block never ran
    assert (tmp_path / "w" / "work" / "runs" / "q" / "summary.json").exists()
    assert (tmp_path / "w" / "work" / "flag.txt").read_text().strip() == "--rounds 1"


def test_a_failing_command_fails_the_page_and_stops_its_block(tmp_path: Path) -> None:
    with pytest.raises(AssertionError) as failure:
        run_page(FIXTURES / "failing_page.md", workdir=tmp_path / "w", extra_env={})
    message = str(failure.value)
    assert "block at line 3 failed (exit 2)" in message
    assert "docs-test: failed: ls no-such-file" in message
    assert (tmp_path / "w" / "first.txt").exists()
    assert not (tmp_path / "w" / "never.txt").exists()


@pytest.mark.slow
def test_a_page_gets_the_tiny_model_folders_and_its_gpu_lines_are_skipped(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    page = FIXTURES / "model_page.md"
    tutorial = Tutorial(str(page.relative_to(ROOT)), tiny_models=True)
    env = _environment(tutorial, request, tmp_path)
    assert "GOSSIPMED_TINY_GPT2" not in env  # the page does not use it
    run_page(page, workdir=tmp_path / "w", extra_env=env)
    assert (tmp_path / "w" / "my-model" / "config.json").is_file()
    assert not (tmp_path / "w" / "adapter-gpu").exists()
