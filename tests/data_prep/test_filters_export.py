"""Dedup, decontamination, generation filters (every drop counted), export and the template check."""

import json

import pytest

from dp_helpers import read_jsonl, write_jsonl
from data_prep.dedup import ContaminationIndex, NearDuplicateIndex, normalize
from data_prep.export import ExportConfig, ReasoningStrippedError, check_reasoning_kept, export
from data_prep.filters import FilterConfig, filter_rows

NEAR = ("Compute the sum of all positive divisors of the number 360, then subtract the number of "
        "divisors, and report the final result as a single integer without any units at all")
BENCH_Q = ("Let a and b be positive real numbers such that a plus b equals ten. "
           "Find the maximum possible value of the product a times b.")


def gen(content="\\boxed{1}", reasoning="r", correct=True, finish="stop", closed=True, tokens=10):
    text = f"<think>\n{reasoning}\n</think>\n\n{content}" if closed else f"<think>\n{reasoning}"
    return {"text": text, "reasoning": reasoning, "content": content if closed else "",
            "think_closed": closed, "finish_reason": finish, "prompt_tokens": 5,
            "completion_tokens": tokens, "correct": correct, "verdict": "correct" if correct else "wrong"}


def row(rid, prompt, gens):
    return {"id": rid, "prompt": prompt, "answer": "1", "source": "t",
            "messages": [{"role": "user", "content": prompt}], "generations": gens}


def test_normalize_and_ngram_contamination():
    assert normalize("  Hello,\tWORLD!! ") == "hello world"
    idx = ContaminationIndex([BENCH_Q, "Short one."], n=8)
    # an 8-word window copied (different case/punctuation) is caught
    assert idx.overlaps("Warm-up: FIND the maximum possible value of the product a times b, please")
    assert not idx.overlaps("Find the maximum value of a product of two numbers")  # 7-word overlaps only
    assert idx.overlaps("SHORT one!")  # an item shorter than n words matches as a whole ...
    assert not idx.overlaps("Here is a short one. Solve it.")  # ... never inside a longer prompt
    assert not idx.overlaps("Totally unrelated question about primes")


def test_near_duplicates():
    near = NearDuplicateIndex(threshold=0.7)
    assert near.seen_similar("a", NEAR) == []
    assert near.seen_similar("b", NEAR.replace("report", "give")) == ["a"]
    assert near.seen_similar("c", "What is the capital city of France and why is it famous") == []


def test_filter_counts_every_drop(tmp_path, tiny_student):
    rows = [
        row("keep", "What is 1+0?", [gen(), gen(correct=False)]),
        row("dup", "what is 1+0 ?", [gen()]),  # exact duplicate after normalisation
        row("near", NEAR, [gen()]),
        row("near2", NEAR.replace("report", "give"), [gen()]),
        row("contam", "Warm-up: " + BENCH_Q, [gen()]),
        row("trunc", "Prompt T", [gen(finish="length", closed=False), gen(closed=False, finish="stop")]),
        row("long", "Prompt L", [gen(reasoning="x" * 300, tokens=5)]),
        row("unver", "Prompt U", [gen(correct=None)]),
    ]
    src = write_jsonl(tmp_path / "ver" / "verified.jsonl", rows)
    bench = write_jsonl(tmp_path / "bench" / "aime.jsonl", [{"problem": BENCH_Q, "answer": "25"}])
    cfg = FilterConfig(decontaminate=[str(bench)], max_tokens=200, tokenizer=str(tiny_student),
                       near_dup_threshold=0.7)
    rep = filter_rows(src.parent, tmp_path / "kept", cfg)
    kept = read_jsonl(tmp_path / "kept" / "kept.jsonl")
    assert [r["id"] for r in kept] == ["keep", "near"]
    assert len(kept[0]["generations"]) == 1
    assert dict(rep.drops) == {"duplicate_prompt": 1, "near_duplicate_prompt": 1, "contaminated": 1,
                               "no_generation_left": 3}
    # over_length was counted with the tokenizer (char-level: ~300 tokens), not the stored 5
    assert dict(rep.generation_drops) == {"incorrect": 1, "truncated": 1, "no_closing_think": 1,
                                          "over_length": 1, "unverifiable": 1}
    saved = json.loads((tmp_path / "kept" / "_report.filter.json").read_text())
    assert saved["rows_in"] == 8 and saved["rows_out"] == 2 and saved["kept_fraction"] == 0.25


def test_export_formats_and_selection(tmp_path):
    rows = [row("a", "Q1", [gen(content="\\boxed{1}", reasoning="long " * 20, tokens=50),
                            gen(content="\\boxed{1}", reasoning="short", tokens=5),
                            gen(content="\\boxed{2}", reasoning="wrong", correct=False, tokens=1)])]
    src = write_jsonl(tmp_path / "kept" / "kept.jsonl", rows)
    export(src, tmp_path / "first.jsonl", ExportConfig(select="first_correct"))
    (first,) = read_jsonl(tmp_path / "first.jsonl")
    assert first["id"] == "a" and first["source"] == "t"
    assert first["messages"][0] == {"role": "user", "content": "Q1"}
    assert first["messages"][1]["role"] == "assistant"
    assert first["messages"][1]["content"].startswith("<think>\nlong")
    assert first["messages"][1]["content"].endswith("</think>\n\n\\boxed{1}")
    export(src, tmp_path / "short.jsonl", ExportConfig(select="shortest_correct"))
    assert "short" in read_jsonl(tmp_path / "short.jsonl")[0]["messages"][1]["content"]
    rep = export(src, tmp_path / "all.jsonl", ExportConfig(select="all_correct", reasoning_field=True))
    rows_all = read_jsonl(tmp_path / "all.jsonl")
    assert [r["id"] for r in rows_all] == ["a#0", "a#1"] and rep.extra["training_rows"] == 2
    assert rows_all[1]["messages"][1] == {"role": "assistant", "content": "\\boxed{1}", "reasoning_content": "short"}


def test_template_check_catches_stripping_template(tmp_path):
    from distill_plugin.testing.tiny import STRIPPING_CHAT_TEMPLATE, build_tokenizer

    keep_dir, strip_dir = tmp_path / "keep", tmp_path / "strip"
    build_tokenizer(keep_dir)
    build_tokenizer(strip_dir, chat_template=STRIPPING_CHAT_TEMPLATE)
    src = write_jsonl(tmp_path / "kept.jsonl", [row("a", "Q1", [gen(reasoning="step one then step two")])])
    rep = export(src, tmp_path / "ok.jsonl", ExportConfig(check_template=str(keep_dir)))
    assert rep.extra["template_check"]["rows_checked"] == 1
    with pytest.raises(ReasoningStrippedError, match="drops the reasoning"):
        export(src, tmp_path / "bad.jsonl", ExportConfig(check_template=str(strip_dir)))
    assert not (tmp_path / "bad.jsonl").exists()  # nothing written on failure
    # the reasoning_content variant renders through the template's reasoning_content branch
    rows = read_jsonl(tmp_path / "ok.jsonl")
    rows[0]["messages"][-1] = {"role": "assistant", "content": "\\boxed{1}", "reasoning_content": "step one then step two"}
    assert check_reasoning_kept(str(keep_dir), rows) == 1


def test_short_benchmark_items_match_only_as_a_whole(tmp_path):
    """A benchmark item of fewer than 8 words drops a prompt that *is* the item (normalised), not
    every prompt that contains its words."""
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"problem": "What is 2+3?"}, {"problem": BENCH_Q}])
    rows = [row("same", "what is 2 + 3", [gen()]),
            row("inside", "Alice asks: what is 2+3? Then she doubles the result twice.", [gen()]),
            row("long", "Warm-up: " + BENCH_Q, [gen()])]
    src = write_jsonl(tmp_path / "ver" / "verified.jsonl", rows)
    rep = filter_rows(src, tmp_path / "kept", FilterConfig(decontaminate=[str(bench)], dedup=False))
    assert [r["id"] for r in read_jsonl(tmp_path / "kept" / "kept.jsonl")] == ["inside"]
    assert rep.drops["contaminated"] == 2
