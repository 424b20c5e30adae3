"""RELIABILITY.md items 22 and 3 in CI: benchmarks/load_test.py --quick against the tiny session models.

The server runs `python app.py` in its own process; 4 client threads send distinct inputs to every endpoint (chat,
classify_intent, classify_image, classify_audio, and streaming sessions of reset_stream + stream_audio chunks) in two
identical rounds, then overflow the queue. Asserted here, from the JSON report: no error, no refusal and no cross-talk
under load (every reply is its own input's single-request answer), memory and upload cache flat after round 1, and the
queue accepting exactly max_size + concurrency of a burst and refusing the rest fast. Timings are reported, not judged.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "load_test.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("fmhub_load_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_load_test_enforces_item_22_and_the_queue_bound(tiny_intent_model, tiny_image_model, tiny_audio_model,
                                                             tmp_path):
    from fmhub.ui.app import CONCURRENCY, QUEUE_MAX_SIZE

    bench = load_benchmark()
    output = tmp_path / "load.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--output", str(output),
               "--models", f"customer-service={tiny_intent_model}", f"medical-image={tiny_image_model}",
               f"voice-command={tiny_audio_model}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    print(done.stdout)  # the Markdown report, for the CI log
    assert output.is_file(), done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(output.read_text())
    failed = {name: c for name, c in report["checks"].items() if not c["passed"]}
    assert done.returncode == 0 and not failed, (failed, done.stdout[-4000:], done.stderr[-2000:])
    assert "result: PASSED" in done.stdout

    # the set-up: 4 threads, two identical rounds of one pass each, distinct inputs for every endpoint
    assert report["threads"] == 4 and report["quick"] is True and report["seconds_per_round"] == 0
    assert len(report["rounds"]) == 2 and set(report["models"]) == set(bench.TABS)
    assert report["inputs"] == {"/chat": 8, "/classify_intent": 8, "/classify_image": 8, "/classify_audio": 8,
                                "/stream_audio": 4}
    # each kept input's single-request answer differs from every other of its endpoint (inputs that could not be told
    # apart were dropped), so a reply sent to the wrong request cannot pass as right
    assert len(report["expected"]) == 36 and all(e["answer"] for e in report["expected"].values())

    # under load: every call answered with its own input's answer; no error, no refusal (4 threads < queue size)
    for round_ in report["rounds"]:
        for api, stats in round_["apis"].items():
            assert stats["requests"] == stats["ok"] + stats["errors"] + stats["refused"] + stats["cross_talk"]
            assert stats["ok"] >= 4, (round_["round"], api, stats)
            assert stats["errors"] == stats["refused"] == stats["cross_talk"] == 0, (api, stats["samples"])
            assert 0 < stats["p50_ms"] <= stats["p95_ms"]
    first, second = ({api: s["requests"] for api, s in r["apis"].items()} for r in report["rounds"])
    assert first == second  # identical batches: what round 2 adds to memory and cache is growth, not new work
    assert first["/reset_stream"] == 4 and first["/stream_audio"] >= 4 * 6  # 4 sessions of 6 or more chunks

    # memory and upload cache flat after round 1 (tolerances stated in benchmarks/load_test.py)
    rss, cache = report["rss_mb"], report["cache_files"]
    assert (rss["after_round_2"] - rss["after_round_1"]) / rss["after_round_1"] <= bench.MEMORY_TOLERANCE, rss
    # every distinct upload (8 images, 8 clips, 4 x 7 or more chunks) went through the server's own cache folder
    # while the expected answers were made; the rounds send the same bytes again, and nothing is added
    assert cache["before"] >= 8 + 8 + 4 * 7, cache
    assert cache["after_round_2"] - cache["after_round_1"] <= bench.CACHE_TOLERANCE, cache

    # item 3: the burst is accepted exactly up to the queue's bounds, the excess refused fast, the server healthy
    flow = report["overflow"]
    assert (flow["max_size"], flow["concurrency"]) == (QUEUE_MAX_SIZE, CONCURRENCY)
    assert flow["fired"] > QUEUE_MAX_SIZE + CONCURRENCY
    assert flow["accepted"] == QUEUE_MAX_SIZE + CONCURRENCY, flow
    assert flow["refused"] == flow["fired"] - flow["accepted"] and flow["errors"] == 0, flow
    assert flow["slow_jobs_outlasted_burst"], flow  # else the count above would not be a test of the bound
    assert flow["refusal_max_s"] <= bench.REFUSAL_BUDGET_S, flow
    health = report["health_after_overflow"]
    assert health["ok"] == health["calls"] >= 5, health
