"""The header every recipe in ``recipes/`` starts with: ``# key: value`` lines, read by the README's
recipe table (``scripts/gen_recipe_table.py``) and by the twin tests (``twin-checks``).

    # recipe: <one-line title>
    # method: <e.g. logit KD (forward KL)>
    # student: <hub id>
    # teacher: <hub id, "served: <id>", or "stored top-k of <id>">
    # sized-for: <e.g. 1x80GB H100, 1x24GB (QLoRA), 8x80GB (DDP)>
    # twin-checks: <comma list of what the tiny twin must show: kd_loss, adapter, packing, ...>

The six lines come first, in any order, one each; the free-text header (launch command, memory
arithmetic) follows them.
"""

from __future__ import annotations

import re
from pathlib import Path

KEYS = ("recipe", "method", "student", "teacher", "sized-for", "twin-checks")
_LINE = re.compile(r"^# ([a-z-]+): (.+?)\s*$")


class HeaderError(ValueError):
    """A recipe whose header breaks the contract; the message names the file and the key."""


def read_header(path: str | Path) -> dict[str, str]:
    """The header of the recipe at ``path`` as ``{key: value}``, every key of ``KEYS`` present once."""
    path = Path(path)
    header: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = _LINE.match(line)
        if not match or match.group(1) not in KEYS:
            break
        key, value = match.groups()
        if key in header:
            raise HeaderError(f"{path}:{number}: `# {key}:` appears twice in the header")
        header[key] = value
    missing = [key for key in KEYS if key not in header]
    if missing:
        raise HeaderError(f"{path}: the header (first lines) lacks `# {missing[0]}:`; every recipe starts with "
                          f"the lines {', '.join(f'`# {k}:`' for k in KEYS)} (README: Recipes)")
    return header


def twin_checks(header: dict[str, str]) -> tuple[str, ...]:
    """The ``twin-checks`` list: what a test of the recipe's tiny twin must verify."""
    return tuple(item.strip() for item in header["twin-checks"].split(",") if item.strip())


def gpus(header: dict[str, str]) -> int:
    """GPUs the recipe was sized for: the N of a leading ``Nx`` in ``sized-for`` (1 without one)."""
    match = re.match(r"\s*(\d+)\s*[x×]", header["sized-for"])
    return int(match.group(1)) if match else 1
