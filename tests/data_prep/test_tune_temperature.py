"""``distill-data tune-temperature``: the suggestion rule on constructed statistics, and the verb through
the real CLI on the tiny pair (one row per value, a suggestion consistent with the printed entropies,
one-line refusals)."""

from __future__ import annotations

import math
import re

import pytest
from typer.testing import CliRunner

from data_prep.cli import app
from distill_plugin.evaluation import PairStats, suggest_temperature
from dp_helpers import write_recipe


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def stats(temperature: float, entropy: float, vocab: int = 100) -> PairStats:
    return PairStats(temperature=temperature, divergence=0.0, kl=0.0, agreement=1.0, correlation=1.0,
                     teacher_entropy=entropy, student_entropy=entropy, rows=1, vocab_size=vocab)


def test_the_rule_picks_the_largest_temperature_under_the_entropy_bound():
    log_v = math.log(100)  # 4.61 nats; half: 2.30
    scored = [stats(1, 0.4), stats(2, 2.2), stats(4, 3.9), stats(10, 4.5)]  # T = 10 near uniform
    assert suggest_temperature(scored)[0] == 2
    assert suggest_temperature(scored, 0.9)[0] == 4  # 3.9 ≤ 0.9·log V = 4.14 < 4.5
    assert suggest_temperature(scored[::-1], 1.0)[0] == 10  # order of the values does not matter
    best, why = suggest_temperature([stats(2, 3.0), stats(4, 4.0)])  # none qualifies: the smallest
    assert best == 2 and "no T" in why
    assert 0.5 * log_v == pytest.approx(2.3026, abs=1e-4)


ROW = re.compile(r"^│\s*([\d.]+)\s*│(.*)│\s*$")


def table(output: str) -> dict[float, list[float]]:
    """T → the numeric columns of its row (KD, T²·KD, teacher H, H / log V, student H, KL, agreement)."""
    rows = {}
    for line in output.splitlines():
        if m := ROW.match(line):
            rows[float(m.group(1))] = [float(x) for x in m.group(2).split("│")]
    return rows


def suggested(output: str) -> float:
    return float(re.search(r"suggested temperature: ([\d.]+)", output).group(1))


def test_one_row_per_value_and_a_suggestion_that_follows_the_rule(kd_root, tmp_path):
    recipe = write_recipe(tmp_path / "r.yml", kd_root, temperature=2.0)
    res = cli("tune-temperature", "--config", recipe, "--values", 1, 2, 4, 8, "--eval-rows", 4, "--device", "cpu")
    assert res.exit_code == 0, res.output
    rows = table(res.output)
    assert sorted(rows) == [1, 2, 4, 8]
    entropy = [rows[t][2] for t in sorted(rows)]
    assert entropy == sorted(entropy) and entropy[0] < entropy[-1]  # softer with T
    assert len({rows[t][6] for t in rows}) == 1  # top-1 agreement does not depend on T
    assert all(rows[t][1] == pytest.approx(t * t * rows[t][0], rel=1e-3, abs=1e-3) for t in rows)  # T²·KD
    under = [t for t in rows if rows[t][3] <= 0.5]
    assert suggested(res.output) == (max(under) if under else 1)
    # the constructed extremes: every T qualifies at f = 1, none at f = 0
    res = cli("tune-temperature", "--config", recipe, 1, 3, "--eval-rows", 2, "--max-entropy-fraction", 1.0)
    assert res.exit_code == 0 and suggested(res.output) == 3, res.output
    res = cli("tune-temperature", "--config", recipe, 3, 1, "--eval-rows", 2, "--max-entropy-fraction", 0.0)
    assert res.exit_code == 0 and suggested(res.output) == 1 and "no T keeps" in res.output, res.output


def one_error(res, name: str) -> None:
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(lines) == 1 and name in lines[0], res.output


def test_bad_input_and_teachers_it_cannot_score_are_one_line_exit_2(kd_root, tmp_path):
    one_error(cli("tune-temperature", "--config", tmp_path / "missing.yml", 1, 2), "missing.yml")
    offline = write_recipe(tmp_path / "o.yml", kd_root)
    offline.write_text(offline.read_text().replace("teacher:", "teacher_logits:").replace("  teacher_dtype: float32\n", ""))
    one_error(cli("tune-temperature", "--config", offline, 1, 2), "offline top-k store")
    one_error(cli("tune-temperature", "--config", write_recipe(tmp_path / "c.yml", kd_root, "student_sp"), 1, 2),
              "tokenizer differs")
