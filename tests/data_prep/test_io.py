"""Bad input lines, torn last lines, resumable appends, ids and shards."""


import pytest

from data_prep.io import (InputError, JsonlAppender, SkipLog, done_ids, parse_shard, read_jsonl,
                          repair_torn_tail, shard_of, stable_id)
from data_prep.schema import FieldMap, canonical_row, split_reasoning


def _bad_file(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_bytes(b'{"problem": "ok 1", "answer": "1"}\n'
                  b'{"problem": "broken", \n'
                  b'\n'
                  b'[1, 2]\n'
                  b'{"problem": "caf\xe9 latin-1"}\n'
                  b'{"problem": "ok 2", "answer": "2"}\n')
    return p


def test_bad_lines_are_skipped_with_file_and_line(tmp_path, caplog):
    p = _bad_file(tmp_path)
    skips = SkipLog()
    rows = list(read_jsonl(p, skips))
    assert [n for n, _ in rows] == [1, 6]
    assert skips.counts == {"malformed_json": 1, "not_an_object": 1, "not_utf8": 1}
    assert any(f"{p}:2: malformed_json" in m for m in skips.messages)
    assert any(f"{p}:5: not_utf8" in m for m in skips.messages)


def test_strict_raises_on_first_bad_line(tmp_path):
    with pytest.raises(InputError, match=r"in.jsonl:2: malformed_json"):
        list(read_jsonl(_bad_file(tmp_path), SkipLog(strict=True)))


def test_missing_and_empty_prompts_are_counted(tmp_path):
    skips = SkipLog()
    f = FieldMap()
    assert canonical_row({"answer": "1"}, f, ("x.jsonl", 3), skips) is None
    assert canonical_row({"question": "   "}, f, ("x.jsonl", 4), skips) is None
    assert skips.counts == {"missing_prompt": 1, "empty_prompt": 1}
    assert skips.messages[0].startswith("x.jsonl:3: missing_prompt")
    row = canonical_row({"question": "Q?", "solution": "42"}, f, ("x", 1), skips)
    assert row["prompt"] == "Q?" and row["answer"] == "42" and row["id"] == stable_id("Q?")
    custom = canonical_row({"q": "Q?", "gold": 7, "qid": 9}, FieldMap(prompt="q", id="qid"), ("x", 1), skips)
    assert custom["id"] == "9" and custom["answer"] == "7"


def test_torn_last_line_ignored_and_repaired(tmp_path):
    p = tmp_path / "out.jsonl"
    p.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "genera')
    assert [o["id"] for _, o in read_jsonl(p, SkipLog(strict=True))] == ["a", "b"]  # not an error
    assert done_ids([p]) == {"a", "b"}
    with JsonlAppender(p) as sink:  # opening repairs the tail
        sink.write({"id": "c"})
    assert p.read_text() == '{"id": "a"}\n{"id": "b"}\n{"id": "c"}\n'
    assert repair_torn_tail(p) == 0
    p.write_text('{"id": "a"}\n{"id": "b"}')  # complete row without newline: kept, not cut
    assert repair_torn_tail(p) == 0 and p.read_text() == '{"id": "a"}\n{"id": "b"}\n'


def test_stable_ids_and_shards_partition():
    assert stable_id("x") == stable_id("x") != stable_id("y")
    ids = [f"id{i}" for i in range(200)]
    parts = [{i for i in ids if shard_of(i, 3) == s} for s in range(3)]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == 200
    assert all(parts)
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) == (0, 1)
    with pytest.raises(ValueError):
        parse_shard("4/4")


@pytest.mark.parametrize("text,prefilled,exp", [
    ("<think>\nR\n</think>\n\nA", False, ("R", "A", True)),
    ("R\n</think>\nA", True, ("R", "A", True)),
    ("R only, cut off", True, ("R only, cut off", "", False)),
    ("<think>\nnever closed", False, ("never closed", "", False)),
    ("plain answer", False, ("", "plain answer", False)),
])
def test_split_reasoning(text, prefilled, exp):
    s = split_reasoning(text, prefilled)
    assert (s.reasoning, s.content, s.closed) == exp
