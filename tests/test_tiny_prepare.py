"""The documented command that builds what the tiny recipes point at (README: "Tiny recipes")."""

from __future__ import annotations

import subprocess
import sys

from axolotl_runs import REPO, SUBPROCESS_ENV


def test_prepare_command_builds_what_the_tiny_recipe_uses(tmp_path, monkeypatch, capsys):
    proc = subprocess.run([sys.executable, "-m", "distill_plugin.testing.tiny", "--out", "runs/tiny"], cwd=tmp_path,
                          env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    root = tmp_path / "runs" / "tiny"
    assert (root / "teacher" / "config.json").exists() and (root / "student" / "config.json").exists()
    assert len((root / "data.jsonl").read_text().splitlines()) == 48
    # The tiny recipe, unedited, passes the plugin's start-up checks from the directory it was built in.
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager

    monkeypatch.chdir(tmp_path)
    cfg = load_cfg(str(REPO / "recipes" / "tiny" / "logit_kd.yml"))
    assert PluginManager.get_instance().load_datasets(cfg) is None
