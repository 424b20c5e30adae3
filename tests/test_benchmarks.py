"""The benchmark scripts keep working: each `--quick` run (tiny models) prints its Markdown table and writes its JSON.

Only the structure is checked, never the timings (they belong to the machine, not to the code).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("customer-service", "medical-image", "voice-command")
pytestmark = pytest.mark.slow


def run_quick(script: str, tmp_path: Path, *extra: str) -> tuple[str, dict]:
    output = tmp_path / f"{script}.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--quick", "--output", str(output),
         "--work-dir", str(tmp_path / "work"), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(output.read_text())


def table_rows(stdout: str, first_header: str) -> list[list[str]]:
    """The rows of the Markdown table whose first header cell is `first_header`."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    assert set(lines[start + 1].replace("|", "")) == {"-"}
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and value == value and value >= 0


def test_train_throughput_quick(tmp_path):
    stdout, report = run_quick("train_throughput", tmp_path)
    assert report["benchmark"] == "train_throughput" and report["quick"] is True
    assert set(report["results"]) == set(SCENARIOS)
    for scenario, summary in report["results"].items():
        systems = summary["systems"]
        assert {"fmhub", "trainer"} <= set(systems)
        for name, values in systems.items():
            assert values["failed_runs"] == 0, (scenario, name)
            assert is_number(values["samples_per_s"]) and is_number(values["peak_rss_mb"])
            if name != "fmhub":
                assert is_number(values["ratio_fmhub_over_this"])
        for name in ("fmhub", "trainer"):  # the quick target (accuracy >= 0) is reached at the first validation
            assert systems[name]["time_to_target_runs"][0]["reached"] is True
            assert is_number(systems[name]["time_to_target_s"]) and systems[name]["epochs_to_target"] == 1
    assert {"trainer-grouped", "trainer-default"} <= set(report["results"]["customer-service"]["systems"])
    throughput = table_rows(stdout, "scenario")
    assert len(throughput) == sum(len(r["systems"]) - 1 for r in report["results"].values())
    assert all(row[4].endswith("x") for row in throughput)
    assert "### Time to target accuracy" in stdout


def test_serving_quick(tmp_path):
    stdout, report = run_quick("serving", tmp_path)
    assert report["benchmark"] == "serving"
    assert set(report["scenarios"]) == set(SCENARIOS)
    for result in report["scenarios"].values():
        for system in ("fmhub", "baseline"):
            assert is_number(result["batch1"][system]["p50_ms"]) and is_number(result["batch1"][system]["p95_ms"])
        for system in ("fmhub", "fmhub, no micro-batching", "baseline"):
            assert is_number(result["concurrent"][system]["requests_per_s"])
            assert result["concurrent"][system]["errors"] == 0 or system == "baseline"
        assert result["concurrent"]["fmhub"]["errors"] == 0
        assert is_number(result["throughput_ratio_fmhub_over_baseline"])
        done, total = map(int, result["same_top_label"].split("/"))
        assert done == total > 0  # both sides serve the same saved model
    for scenario in ("customer-service", "medical-image"):
        assert report["scenarios"][scenario]["mean_requests_per_merged_call"] >= 1
    assert set(report["gradio"]) == set(SCENARIOS)
    assert all(is_number(g["round_trip_p50_ms"]) for g in report["gradio"].values())
    assert len(table_rows(stdout, "scenario")) == 3
    assert "### Gradio overhead (p50)" in stdout


def test_footprint_quick(tmp_path):
    stdout, report = run_quick("footprint", tmp_path)
    assert report["benchmark"] == "footprint"
    assert is_number(report["cold_start_s"]) and is_number(report["rss_after_all_tabs_mb"])
    run = report["runs"][0]
    assert set(run["tabs"]) == set(SCENARIOS)
    assert all(is_number(tab["first_request_s"]) and is_number(tab["rss_mb"]) for tab in run["tabs"].values())
    rows = table_rows(stdout, "measure")
    assert rows[0][0].startswith("cold start") and any("all three tabs" in row[0] for row in rows)


def test_failing_model_quick(tmp_path):
    """Each system answered every chat request with a refusal and the medical tab kept answering throughout."""
    stdout, report = run_quick("failing_model", tmp_path, "--systems", "fmhub,unpaced")  # the third: same code path
    assert "| round | system |" in stdout
    assert [r["system"] for r in report["rows"]] == ["fmhub", "unpaced"]
    for row in report["rows"]:
        assert row["chat_failed_replies"] == row["chat_requests"] == 12
        assert row["calls_before"] == 10 and row["calls_during"] >= 10
        assert 0 < row["p50_before_ms"] <= row["p95_before_ms"] and row["p95_ratio"] > 0


def test_semi_supervised_quick(tmp_path):
    stdout, report = run_quick("semi_supervised", tmp_path, "--scenario", "customer-service", "--seeds", "0,1",
                               "--labels-per-class", "4", "--rounds", "1", "--baseline-from-round-0")
    assert report["mode"] == "low-label" and [r["seed"] for r in report["runs"]] == [0, 1]
    for run in report["runs"]:
        assert 0 <= run["labelled_only"]["accuracy"] <= 1 and 0 <= run["semi_supervised"]["accuracy"] <= 1
        assert [r["round"] for r in run["semi_supervised"]["rounds"]] == [1]
    (row,) = table_rows(stdout, "scenario")
    assert row[:3] == ["customer-service", "4 per class", "2"] and "±" in row[3] and "±" in row[4]


def test_voice_stream_rules_replays_the_detector_on_saved_window_probabilities(tmp_path):
    """The stream-rule benchmark's parts: the command stream keeps each clip's span, the running mean is exact, and
    its rules fire as the detector does (c2: two agreeing windows; m3: the mean of three)."""
    import soundfile as sf

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import voice_stream_rules as vsr

    for label in ("yes", "no", "_unknown_"):
        (tmp_path / label).mkdir()
        for k in range(2):
            sf.write(tmp_path / label / f"test_{k}_clean.wav", np.full(16000, 0.1 * (k + 1), np.float32), 16000)
    stream, spans = vsr.command_stream(tmp_path, clips=10)
    assert len(spans) == 4 and {s[2] for s in spans} == {"yes", "no"}  # other words stay out
    for start, end, _ in spans:  # each span holds one whole clip (constant 0.1 or 0.2), the gaps only quiet noise
        clip = stream[round(start * 16000):round(end * 16000)]
        assert end - start == 1.0 and np.ptp(clip) == 0 and round(float(clip[0]), 4) in (0.1, 0.2)
    assert np.abs(stream[:round(spans[0][0] * 16000)]).max() < 0.02
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=9).astype(np.float32)
    ours = vsr.mean_of_last(probs, 3)
    for i in range(9):
        assert np.allclose(ours[i], probs[max(0, i - 2):i + 1].mean(0), atol=1e-6)
    names = ["yes", "no", "_silence_", "_unknown_"]
    sure = np.array([[0.1, 0, 0, 0.9]] * 4 + [[0.95, 0, 0, 0.05]] * 2 + [[0.1, 0, 0, 0.9]] * 4, np.float32)
    times = np.arange(len(sure)) * 0.25
    assert [d["label"] for d in vsr.detections("c2", sure, times, names, 0.9)] == ["yes"]
    assert vsr.detections("c3", sure, times, names, 0.9) == []
    assert vsr.detections("m3", sure, times, names, 0.9) == []  # two sure windows of three: mean 0.67
