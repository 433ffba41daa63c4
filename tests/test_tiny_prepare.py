"""The documented commands that build the tiny models and derive a recipe's CPU twin (README: "Recipes")."""

from __future__ import annotations

import subprocess
import sys

from axolotl_runs import REPO, SUBPROCESS_ENV


def test_prepare_and_derive_commands_build_a_twin_that_passes_preflight(tmp_path, monkeypatch):
    def run(*args):
        proc = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    run("distill_plugin.testing.tiny", "--out", "runs/tiny")
    root = tmp_path / "runs" / "tiny"
    assert (root / "teacher" / "config.json").exists() and (root / "student" / "config.json").exists()
    assert len((root / "data.jsonl").read_text().splitlines()) == 64
    out = run("distill_plugin.testing.twins", str(REPO / "recipes" / "logit_kd_qwen2_1p5b.yml"), "-o", "runs/tiny/logit_kd.yml")
    assert "base_model: Qwen/Qwen2-1.5B → runs/tiny/student (tiny student)" in out
    # The twin, unedited, passes the plugin's start-up checks from the directory it was built in.
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager

    monkeypatch.chdir(tmp_path)
    cfg = load_cfg("runs/tiny/logit_kd.yml")
    assert PluginManager.get_instance().load_datasets(cfg) is None
