"""The one shard rule (``distill_plugin.shards``): pinned values, a partition, the spec parser."""

import pytest

from distill_plugin.shards import parse_shard, shard_of


def test_shard_rule_is_pinned():
    # md5 of the key mod n: changing the rule would re-split every existing sharded output.
    assert [shard_of(f"q{i}", 4) for i in range(8)] == [1, 2, 3, 1, 2, 1, 1, 1]
    assert shard_of("0123456789abcdef0123456789abcdef", 7) == 4  # a capture row key (hex)
    assert shard_of("add-17-21", 3) == 2
    assert all(shard_of(f"q{i}", 1) == 0 for i in range(20))


def test_shards_partition_the_keys():
    ids = [f"id{i}" for i in range(200)]
    parts = [{i for i in ids if shard_of(i, 3) == s} for s in range(3)]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == 200
    assert all(len(p) > 40 for p in parts)  # roughly even


@pytest.mark.parametrize("spec,expected", [(None, (0, 1)), ("", (0, 1)), ("0/1", (0, 1)), ("3/4", (3, 4))])
def test_parse_shard(spec, expected):
    assert parse_shard(spec) == expected


@pytest.mark.parametrize("spec", ["4/4", "-1/2", "1/0", "1", "a/b", "1/2/3"])
def test_parse_shard_rejects(spec):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(spec)
