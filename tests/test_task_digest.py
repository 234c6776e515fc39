"""Every site of a consortium trains the same task: the task digest in the consortium settings
and hash, recorded only when it is not the default (so older files keep their hash), and a
site whose own configuration gives another task refused at start."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from test_roster import ring

from gossipmed.consortium.roster import Roster, load_roster, save_roster
from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.consortium.task import (
    BUILT_IN_FORMATS,
    DEFAULT_TASK,
    TaskDigest,
    check_site_task,
    dataset_format,
    site_task,
)
from gossipmed.errors import ConfigError, RosterError
from gossipmed.learn.config import DataConfig, LearningConfig
from node.cli import main
from node.daemon.cluster import create_cluster, default_sections, sections_task

# Computed on the code before the task digest existed (main at b110647) for these rosters.
HASH_BEFORE = {
    "ring": "19ac2442d405bab95030d43592ba159c71ffe9629b9b91f0bbd44913f49d666f",
    "secure": "6c80ba141c4f1f91072b652af114e672344a878af2077b181a0978c65c73af86",
    "steps": "397d0e363f002d22e45108657bf2cf4674dfd46d3585d9114e04396deba236f1",
}
INSTRUCTION = TaskDigest.of("instruction", max_length=256)


def _complete(names: str = "abcdef") -> Roster:
    edges = tuple((a, b) for a in names for b in names if a < b)
    return dataclasses.replace(ring(names), edges=edges)


def test_a_default_consortium_hashes_exactly_as_before(tmp_path: Path) -> None:
    secure = ConsortiumSettings(secure_aggregation=True)
    assert ring().hash_hex == HASH_BEFORE["ring"]
    assert dataclasses.replace(_complete(), settings=secure).hash_hex == HASH_BEFORE["secure"]
    steps = dataclasses.replace(ring(), settings=ConsortiumSettings(gossip_steps=3))
    assert steps.hash_hex == HASH_BEFORE["steps"]
    save_roster(ring(), tmp_path / "c.toml")
    assert "task" not in (tmp_path / "c.toml").read_text()  # nothing new in an old file
    assert load_roster(tmp_path / "c.toml").settings.task == DEFAULT_TASK


def test_another_task_enters_the_hash_and_round_trips_through_the_file(tmp_path: Path) -> None:
    qa = dataclasses.replace(ring(), settings=ConsortiumSettings(task=INSTRUCTION))
    longer = dataclasses.replace(
        ring(), settings=ConsortiumSettings(task=TaskDigest.of("label", max_length=128))
    )
    newer = dataclasses.replace(INSTRUCTION, template_version=INSTRUCTION.template_version + 1)
    renders_differently = dataclasses.replace(ring(), settings=ConsortiumSettings(task=newer))
    hashes = {ring().hash, qa.hash, longer.hash, renders_differently.hash}
    assert len(hashes) == 4
    save_roster(qa, tmp_path / "c.toml")
    loaded = load_roster(tmp_path / "c.toml")
    assert loaded.settings.task == INSTRUCTION and loaded.hash == qa.hash


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('task = { format = "essay" }', "format"),
        ('task = { format = "label", scoring = "none" }', "scoring"),
        ('task = { format = "label", max_length = 2 }', "max_length"),
        ('task = { format = "label", colour = 1 }', "colour"),
    ],
)
def test_a_bad_task_in_the_file_is_a_roster_error(tmp_path: Path, table: str, message: str) -> None:
    save_roster(ring(), tmp_path / "c.toml")
    text = (tmp_path / "c.toml").read_text().replace("[gossip]\n", f"[gossip]\n{table}\n")
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(RosterError, match=message):
        load_roster(tmp_path / "c.toml")


def test_a_simulation_takes_its_task_from_its_data() -> None:
    with pytest.raises(ConfigError, match="task of its \\[data\\]"):
        ConsortiumSettings.from_mapping({"task": {}}, where="[consortium]", task=False)


def test_a_site_configured_for_another_task_is_refused() -> None:
    notes = LearningConfig(data=DataConfig(dataset="notes"))
    check_site_task(DEFAULT_TASK, notes)  # notes is a label task at max_length 64
    with pytest.raises(ConfigError, match="every site must train the same task"):
        check_site_task(INSTRUCTION, notes)
    longer = LearningConfig(data=DataConfig(dataset="notes", max_length=128))
    with pytest.raises(ConfigError, match="max_length 128"):
        check_site_task(DEFAULT_TASK, longer)


def test_user_data_gives_its_format(tmp_path: Path) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("\n".join(f"patient {i} reports mild chest pain" for i in range(40)))
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text(
        "\n".join(json.dumps({"text": f"case {i}", "label": "ab"[i % 2]}) for i in range(40))
    )
    text_task = site_task(LearningConfig(data=DataConfig(dataset="user", path=str(plain))))
    assert text_task == TaskDigest.of("text") and text_task.scoring == "none"
    label_task = site_task(LearningConfig(data=DataConfig(dataset="user", path=str(labelled))))
    assert label_task == DEFAULT_TASK


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUILT_IN_FORMATS))
def test_the_known_built_in_formats_are_what_loading_them_gives(name: str) -> None:
    from gossipmed.learn.datasets import load_dataset

    assert dataset_format(load_dataset(DataConfig(dataset=name))) == BUILT_IN_FORMATS[name]


def _sections(dataset: str, path: str | None = None) -> object:
    def sections(i: int) -> dict[str, dict[str, object]]:
        out = default_sections(
            index=i,
            nodes=3,
            rounds=1,
            round_timeout_s=5.0,
            dataset=dataset,
            base_model=None,
            steps=1,
        )
        if path is not None:
            out["data"]["path"] = path
        return out

    return sections


def test_a_cluster_consortium_records_what_its_sites_train(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("\n".join(f"patient {i} reports mild chest pain" for i in range(40)))
    sites = create_cluster(
        tmp_path / "c", nodes=3, topology="ring", sections=_sections("user", str(text))
    )  # type: ignore[arg-type]
    roster = load_roster(tmp_path / "c" / "consortium.toml")
    assert roster.settings.task == TaskDigest.of("text")
    assert sections_task(sites[0], _sections("notes")(0)) == DEFAULT_TASK  # type: ignore[operator]


def test_the_daemon_refuses_a_site_whose_task_differs_before_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sites = create_cluster(
        tmp_path / "c",
        nodes=3,
        topology="ring",
        sections=_sections("notes"),  # type: ignore[arg-type]
        settings=ConsortiumSettings(task=INSTRUCTION),
    )
    assert main(["run", "--site", str(sites[0])]) == 2
    err = capsys.readouterr().err
    assert "this site's task is label" in err and "consortium's is instruction" in err
    assert not (sites[0] / "privacy").exists()  # refused before the ledger opened


def test_consortium_show_prints_the_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_roster(
        dataclasses.replace(ring(), settings=ConsortiumSettings(task=INSTRUCTION)),
        tmp_path / "c.toml",
    )
    assert main(["consortium", "show", str(tmp_path / "c.toml")]) == 0
    assert "task: instruction (template chat" in capsys.readouterr().out
    assert main(["consortium", "show", str(tmp_path / "c.toml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["task"]["max_length"] == 256


def test_consortium_build_records_the_task_it_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gossipmed.consortium.setup import create_site

    cards = []
    for name in ("alpha", "beta", "gamma"):
        create_site(tmp_path / name, name=name, listen=["/ip4/127.0.0.1/tcp/4001"])
        cards.append(str(tmp_path / name / "card.toml"))
    out = tmp_path / "c.toml"
    argv = ["consortium", "build", *cards, "--topology", "ring", "--out", str(out)]
    assert main([*argv, "--max-length", "256"]) == 2  # a length without a task
    assert "--max-length goes with --task" in capsys.readouterr().err
    assert main([*argv, "--task", "instruction", "--max-length", "256", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == INSTRUCTION.to_mapping()
    assert load_roster(out).settings.task == INSTRUCTION
    assert main([*argv, "--force"]) == 0  # no --task: the default, as before
    assert load_roster(out).settings.task == DEFAULT_TASK
