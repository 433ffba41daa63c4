"""The one shard rule, for generation prompts and offline-capture rows alike.

``--shard i/n`` (0-based ``i``) gives worker ``i`` of ``n`` the keys with ``shard_of(key, n) == i``,
where ``shard_of(key, n) = int(md5(key as UTF-8).hexdigest(), 16) mod n``. Keys are strings:
a prompt's id in ``distill-data generate``, a row's content key (``offline.store.row_key``, the
blake2b hex of its token ids) in ``distill-data logits``. The rule depends on the key only, never
on input order, so every worker computes the same partition independently.

Fixed forever (tests pin values): changing it would re-split every existing sharded output. (It is
the rule ``distill-data generate`` always used; before this module, offline capture used
``int(row_key, 16) mod n``: a store captured with ``n > 1`` shards by that older version should be
finished with it, or recaptured — resume skips rows already stored under the same directory, so
shards writing into one shared directory stay correct either way.)
"""

from __future__ import annotations

import hashlib


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` (0-based i) -> ``(i, n)``; ``None`` or ``""`` -> ``(0, 1)``. Bad specs raise ValueError."""
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like 'i/n' (e.g. 0/4), got {spec!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {spec}: need 0 <= i < n")
    return i, n


def shard_of(key: str, num_shards: int) -> int:
    """The shard that owns ``key``: ``int(md5(key), 16) mod num_shards``."""
    return int(hashlib.md5(key.encode("utf-8")).hexdigest(), 16) % num_shards
