"""The threat model (docs/threat-model.md) makes no claim that no test checks.

Every bullet under a role's "can" or "cannot" list names at least one test as
`tests/FILE.py::TEST`, and every test it names exists: renaming or deleting a test that backs
a claim fails here until the claim is re-backed or withdrawn."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "threat-model.md"
REFERENCE = re.compile(r"tests/(test_[A-Za-z0-9_]+\.py)::([A-Za-z_][A-Za-z0-9_]*)")
CLAIM_LISTS = re.compile(r"^\*\*(It can|It cannot)[^*]*\*\*", re.MULTILINE)


def claims() -> list[str]:
    """The bullets of every "It can" / "It cannot" list, continuation lines joined."""
    bullets: list[str] = []
    in_list = False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if CLAIM_LISTS.match(line):
            in_list = True
            continue
        if not in_list:
            continue
        if line.startswith("- "):
            bullets.append(line[2:])
        elif line.startswith("  ") and bullets:
            bullets[-1] += " " + line.strip()
        elif line.strip() == "":
            continue
        else:
            in_list = False
    return bullets


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    for node in tree.body:  # hypothesis state machines: TestX = XMachine.TestCase
        if isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_every_claim_of_the_threat_model_names_a_test() -> None:
    found = claims()
    assert len(found) >= 10, "the threat model lost its claim lists"
    unbacked = [c for c in found if not REFERENCE.search(c)]
    assert not unbacked, f"claims without a test: {unbacked}"


def test_every_test_the_threat_model_names_exists() -> None:
    missing = []
    for claim in claims():
        for file, name in REFERENCE.findall(claim):
            path = ROOT / "tests" / file
            if not path.is_file() or name not in defined_tests(path):
                missing.append(f"tests/{file}::{name}")
    assert not missing, f"the threat model names tests that do not exist: {missing}"
