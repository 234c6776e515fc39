"""A site's instruction and multiple-choice records: what each JSONL format loads as, how it
is rendered through the prompt template, what the loss covers, and what is cut or dropped
to fit max_length."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch

from gossipmed.errors import DataError
from gossipmed.learn.config import DataConfig
from gossipmed.learn.data import Encoder
from gossipmed.learn.datasets import Example, TaskDataset, load_dataset
from gossipmed.learn.templates import TEMPLATE_VERSION, PlainTemplate
from gossipmed.learn.tokenizer import train_bpe_tokenizer

WORDS = "patient fever cough pain chest what which is the a of answer user assistant system"


@cache
def _tokenizer() -> Any:
    texts = [f"{WORDS} {i} Question User: Assistant: System:" for i in range(300)]
    return train_bpe_tokenizer(texts, vocab_size=400)


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _load(path: Path) -> TaskDataset:
    return load_dataset(DataConfig(dataset="user", path=str(path), n_sites=1))


def _ids(text: str) -> list[int]:
    return list(_tokenizer()(text, add_special_tokens=False)["input_ids"])


PROMPTS = [{"prompt": f"what is {i}", "response": f"the answer is {i}"} for i in range(40)]
CHATS = [
    {
        "messages": [
            {"role": "system", "content": "answer briefly"},
            {"role": "user", "content": f"pain {i}"},
            {"role": "assistant", "content": "which"},
            {"role": "user", "content": f"fever {i}"},
            {"role": "assistant", "content": f"cough {i}"},
        ]
    }
    for i in range(40)
]
CHOICES = [
    {
        "question": f"which {i}",
        "options": {"A": "fever", "B": "chest pain", "C": "cough"},
        "answer": "ABC"[i % 3],
    }
    for i in range(40)
]


def test_prompt_response_records_round_trip(tmp_path: Path) -> None:
    d = _load(_write(tmp_path / "qa.jsonl", PROMPTS))
    assert d.candidate_kind == "none" and d.labels == ()
    by_text = {ex.text: ex for ex in d.train + d.test}
    assert len(by_text) == 40
    assert by_text["what is 7"] == Example(text="what is 7", label=None, response="the answer is 7")


def test_chat_records_round_trip(tmp_path: Path) -> None:
    d = _load(_write(tmp_path / "chat.jsonl", CHATS))
    ex = next(e for e in d.train + d.test if e.text == "fever 3")
    assert ex.response == "cough 3"
    assert ex.messages == (
        ("system", "answer briefly"),
        ("user", "pain 3"),
        ("assistant", "which"),
        ("user", "fever 3"),
    )
    assert d.candidate_kind == "none"


def test_multiple_choice_records_round_trip(tmp_path: Path) -> None:
    d = _load(_write(tmp_path / "mc.jsonl", CHOICES))
    assert d.candidate_kind == "options" and d.labels == ()
    ex = next(e for e in d.train + d.test if e.text == "which 4")
    assert ex.options == (("A", "fever"), ("B", "chest pain"), ("C", "cough"))
    assert ex.label == "B" and ex.response is None


def _rendered(ex: Example, max_length: int = 64) -> tuple[Encoder, list[int], list[int]]:
    d = TaskDataset("t", "", (), (ex,), (ex,), ())
    enc = Encoder(_tokenizer(), dataset=d, max_length=max_length)
    row = enc.encode([ex])
    ids, mask = row.input_ids[0], row.loss_mask[0]
    return enc, ids[: int((mask > 0).nonzero().max()) + 1].tolist(), ids[mask > 0].tolist()


def test_plain_template_renders_the_documented_text_and_the_loss_covers_the_response() -> None:
    ex = Example(text="what is 7", label=None, response="the answer is 7")
    enc, ids, target = _rendered(ex)
    tok = _tokenizer()
    assert enc.template.name == f"plain-v{TEMPLATE_VERSION}" and enc.task_format == "instruction"
    assert tok.decode(ids) == "<s>User: what is 7\nAssistant: the answer is 7</s>"
    assert ids.count(tok.bos_token_id) == 1
    assert target == [*_ids(" the answer is 7"), tok.eos_token_id]  # response + end of turn
    assert enc.response_terminator_ids == (tok.eos_token_id,)
    assert enc.render_prompt(ex) == ids[: len(ids) - len(target)]


def test_chat_turns_render_in_order_and_only_the_last_answer_is_a_target(tmp_path: Path) -> None:
    d = _load(_write(tmp_path / "chat.jsonl", CHATS))
    ex = next(e for e in d.train + d.test if e.text == "fever 3")
    _, ids, target = _rendered(ex)
    assert _tokenizer().decode(ids) == (
        "<s>System: answer briefly\nUser: pain 3\nAssistant: which</s>\nUser: fever 3\n"
        "Assistant: cough 3</s>"
    )
    assert target == PlainTemplate(_ids, bos=1, eos=2).response_ids("cough 3")


def test_multiple_choice_trains_on_the_correct_option_and_scores_every_option(
    tmp_path: Path,
) -> None:
    d = _load(_write(tmp_path / "mc.jsonl", CHOICES))
    ex = next(e for e in d.train + d.test if e.text == "which 4")
    enc, ids, target = _rendered(ex)
    assert _tokenizer().decode(ids) == "<s>User: which 4\nAssistant: chest pain</s>"
    assert target == list(enc.option_token_ids(ex)[1]) and enc.answer_index(ex) == 1
    assert enc.task_format == "options"
    grid = enc.encode_candidates([ex])
    assert grid.labels == ("A", "B", "C")
    prompt = enc.render_prompt(ex)
    for row, mask, option in zip(grid.input_ids, grid.loss_mask, ex.options, strict=True):
        assert row[: len(prompt)].tolist() == prompt  # every option after the same prompt
        assert row[mask > 0].tolist() == enc.template.response_ids(option[1])


def test_a_long_prompt_loses_the_end_of_its_user_content_never_the_template_tail() -> None:
    long = Example(text="fever " * 60 + "END", label=None, response="cough")
    enc, ids, target = _rendered(long, max_length=24)
    assert len(ids) == 24 and target == enc.template.response_ids("cough")
    text = _tokenizer().decode(ids)
    assert text.startswith("<s>User: fever fever") and "END" not in text
    assert text.endswith("\nAssistant: cough</s>")
    kept, counts = enc.fit([long, Example(text="what", label=None, response="cough")])
    assert len(kept) == 2 and (counts.truncated, counts.dropped) == (1, 0)


def test_an_example_whose_response_alone_does_not_fit_is_dropped_and_counted() -> None:
    fits = Example(text="what", label=None, response="cough")
    huge = Example(text="what", label=None, response="fever " * 40)
    d = TaskDataset("t", "", (), (fits, huge, fits), (fits,), ())
    enc = Encoder(_tokenizer(), dataset=d, max_length=24)
    kept, counts = enc.fit(d.train)
    assert kept == (fits, fits) and (counts.truncated, counts.dropped) == (0, 1)
    fitted, total = enc.fit_dataset(d)
    assert fitted.train == (fits, fits) and total.dropped == 1
    with pytest.raises(DataError, match="max_length"):
        enc.encode([huge])
    only_huge = TaskDataset("t", "", (), (huge,), (fits,), ())
    with pytest.raises(DataError, match=r"no training example of t fits data\.max_length 24"):
        Encoder(_tokenizer(), dataset=only_huge, max_length=24).fit_dataset(only_huge)


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_a_tokenizer_with_a_chat_template_is_prompted_through_it() -> None:
    tok = train_bpe_tokenizer([f"{WORDS} {i}" for i in range(100)], vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|end|>", "<|user|>", "<|assistant|>"]})
    tok.chat_template = CHAT_TEMPLATE
    ex = Example(text="fever", label=None, response="cough", messages=(("user", "fever"),))
    d = TaskDataset("t", "", (), (ex,), (ex,), ())
    enc = Encoder(tok, dataset=d, max_length=32)
    end = tok.convert_tokens_to_ids("<|end|>")
    assert enc.template.end_of_turn == end
    assert enc.response_terminator_ids == (end, tok.eos_token_id)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "fever"}], add_generation_prompt=True, tokenize=False
    )
    prompt = enc.render_prompt(ex)
    assert prompt == tok(rendered, add_special_tokens=False)["input_ids"]
    assert prompt.count(tok.bos_token_id) == 1  # the template renders BOS: not added again
    row = enc.encode([ex])
    assert row.input_ids[0][row.loss_mask[0] > 0].tolist() == [*tok("cough")["input_ids"], end]


def _expect_error(tmp_path: Path, rows: list[Any], match: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=match):
        _load(path)


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"prompt": "a"}, 'bad.jsonl:2: "response" must be a string'),
        ({"prompt": "a", "response": " "}, 'bad.jsonl:2: "response" is empty'),
        ({"messages": [{"role": "user", "content": "a"}]}, "bad.jsonl:2: .*at least two"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "bad.jsonl:2: the last message must be the assistant's",
        ),
        (
            {"messages": [{"role": "bot", "content": "a"}, {"role": "assistant", "content": "b"}]},
            r"bad.jsonl:2: messages\[0\] role",
        ),
        (
            {
                "messages": [
                    {"role": "system", "content": "a"},
                    {"role": "assistant", "content": "b"},
                ]
            },
            "bad.jsonl:2: messages need a user turn",
        ),
        ({"question": "q", "options": {"A": "x"}, "answer": "A"}, "bad.jsonl:2: .*two options"),
        (
            {"question": "q", "options": {"A": "x", "B": "y"}, "answer": "C"},
            "bad.jsonl:2: .*answer",
        ),
        ({"question": "q", "options": {"A": "x", "B": "x"}, "answer": "A"}, "same text"),
        ({"prompt": "a", "text": "b"}, "bad.jsonl:2: a record needs exactly one of"),
        ([1, 2], "bad.jsonl:2: expected a JSON object"),
    ],
)
def test_a_malformed_record_is_refused_with_its_file_and_line(
    tmp_path: Path, record: Any, match: str
) -> None:
    first = {"prompt": "ok", "response": "fine"}
    if "question" in record:
        first = CHOICES[0]
    elif "messages" in record:
        first = CHATS[0]
    _expect_error(tmp_path, [first, record], match)


def test_a_file_mixing_formats_is_refused(tmp_path: Path) -> None:
    _expect_error(
        tmp_path, [PROMPTS[0], CHOICES[0]], 'bad.jsonl:2: a "question" record in a file of "prompt"'
    )
    folder = tmp_path / "sites"
    folder.mkdir()
    _write(folder / "a.jsonl", PROMPTS)
    _write(folder / "b.jsonl", [{"text": "x", "label": "y"}])
    with pytest.raises(DataError, match="mixes record formats"):
        _load(folder)


def test_a_label_task_and_instruction_records_cannot_share_an_encoder() -> None:
    ex = Example(text="a", label="yes")
    qa = Example(text="b", label=None, response="c")
    d = TaskDataset("t", "Label:", ("yes",), (ex, qa), (ex,), ())
    with pytest.raises(DataError, match="mixes label records and instruction records"):
        Encoder(_tokenizer(), dataset=d, max_length=32)


def test_generation_prompts_render_the_task_template_with_room_for_the_answer() -> None:
    ex = Example(text="what", label=None, response="cough")
    d = TaskDataset("t", "", (), (ex,), (ex,), ())
    enc = Encoder(_tokenizer(), dataset=d, max_length=20)
    asked = Example(text="fever " * 30, label=None)  # what `generate --prompt` builds
    prompt = enc.render_prompt(asked, reserve=8)
    assert len(prompt) == 12 and _tokenizer().decode(prompt).endswith("\nAssistant:")
    assert torch.tensor(prompt)[0] == _tokenizer().bos_token_id
