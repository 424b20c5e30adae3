"""benchmarks/load_test.py in --quick mode against the tiny session models: the server in its own process, two
client threads over all three tabs. Checks the report's structure and that nothing failed; timings are not judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABS = ("customer-service", "medical-image", "voice-command")


def test_quick_load_test_runs_clean(tiny_intent_model, tiny_image_model, tiny_audio_model, tmp_path):
    output = tmp_path / "load.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "load_test.py"), "--quick", "--output", str(output),
               "--models", f"customer-service={tiny_intent_model}", f"medical-image={tiny_image_model}",
               f"voice-command={tiny_audio_model}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    # the printed Markdown table: one row per round and tab, the server's memory and cache rows
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| round | tab (api) | requests | ok | p50 ms | p95 ms | errors |")
    for api in ("chat", "classify_image", "classify_audio"):
        assert sum(f"({api})" in line for line in table) == 2, api
    assert any(line.startswith("| RSS MB |") for line in table)
    assert any(line.startswith("| upload cache files |") for line in table)
    assert "result: PASSED" in done.stdout

    report = json.loads(output.read_text())
    assert report["threads"] == 2 and report["quick"] is True and len(report["rounds"]) == 2
    assert set(report["models"]) == set(TABS)
    for number, round_ in enumerate(report["rounds"], 1):
        assert round_["round"] == number and set(round_["tabs"]) == set(TABS)
        for tab, stats in round_["tabs"].items():
            assert stats["requests"] == stats["ok"] + stats["errors"] + stats["refused"] + stats["cross_talk"]
            assert stats["ok"] >= 1, (number, tab, stats)
            assert stats["errors"] == 0 and stats["cross_talk"] == 0, (number, tab, stats["samples"])
            assert 0 < stats["p50_ms"] <= stats["p95_ms"]
    assert set(report["rss_mb"]) == {"started", "before", "after_round_1", "after_round_2"}
    assert all(value > 0 for value in report["rss_mb"].values())
    assert set(report["cache_files"]) == {"before", "after_round_1", "after_round_2"}
    assert report["cache_files"]["after_round_1"] > 0  # the uploads went through the server's own cache folder
    assert {"no_unexpected_errors", "no_cross_talk", "every_tab_answered", "memory_flat", "cache_flat"} <= set(
        report["checks"])
    assert report["checks"]["no_unexpected_errors"]["value"] == 0 and report["passed"] is True
    # every request had its expected answer worked out beforehand, by a single call
    assert len(report["expected"]) >= 3 * 2 and all(report["expected"].values())
