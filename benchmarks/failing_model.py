"""The other tabs' latency while clients keep calling a model that cannot load (RELIABILITY: a damaged model or a
Hub answering 503 must not slow the rest of the app down).

    python benchmarks/failing_model.py --output benchmarks/results/failing_model.json
    python benchmarks/failing_model.py --quick            # tiny random models, one short round: about a minute

The server runs `python app.py` in its own process; its customer-service model is a Hub id while the Hub cannot be
reached (`HF_HUB_OFFLINE=1`), so every load fails; the medical and voice tabs get the cached fine-tuned defaults
(or stand-ins, see `_common.resolve_models`). One `gradio_client` measures the medical tab (`/classify_image`, one
call after another): `--calls` calls on the quiet server, then as many while a second process sends `--requests`
chat requests from `--threads` threads to the failing model, each thread sending its next one as soon as the last is
answered. Reported: the medical tab's p50 / p95 before and during, their ratio, how long the chat requests took.

Systems, interleaved round by round (A B C A B C ...):
- `fmhub`: the app as shipped (a slot that cannot answer refuses at most `REFUSALS_PER_SECOND` requests a second,
  Gradio's per-event monitoring summary off);
- `unpaced`: the same without refusal pacing;
- `unpaced+analytics`: also with Gradio's monitoring summary recomputed after every event (Gradio's default).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import (  # noqa: E402
    bench_env,
    fmt,
    machine,
    markdown_table,
    median,
    percentile,
    print_header,
    resolve_models,
    sample_inputs,
    write_json,
)
from load_test import Server  # noqa: E402

UNREACHABLE_MODEL = "fmhub-bench/unreachable-intent-model"  # a Hub id: offline, every load attempt fails
SYSTEMS = {
    "fmhub": "",
    "unpaced": "import fmhub.ui.models as m; m.REFUSALS_PER_SECOND = float('inf')",
    "unpaced+analytics": "import fmhub.ui.models as m; m.REFUSALS_PER_SECOND = float('inf')\n"
                         "import fmhub.ui.app as a; quiet = a.quiet_idle_queue\n"
                         "def gradio_default(demo, poll_seconds=0.01):\n"
                         "    quiet(demo, poll_seconds)\n"
                         "    demo._queue.ANAYLTICS_CACHE_FREQUENCY, demo._queue.ANALYTICS_MAX_EVENTS = 1, 10_000\n"
                         "a.quiet_idle_queue = gradio_default",
}

# the client process that keeps calling the failing chat model
HAMMER = """
import concurrent.futures, json, sys, threading, time
from gradio_client import Client
url, requests, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
own = threading.local()
def chat(i):
    if not hasattr(own, "client"):
        own.client = Client(url, verbose=False, analytics_enabled=False)
    started = time.perf_counter()
    history = own.client.predict(f"where is my package {i}", [], api_name="/chat")[0]
    content = history[-1]["content"]
    text = content if isinstance(content, str) else " ".join(str(p.get("text", p)) for p in content)
    return time.perf_counter() - started, text
started = time.monotonic()
with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    answers = list(pool.map(chat, range(requests)))
print(json.dumps({"seconds": time.monotonic() - started, "reply_seconds": [a[0] for a in answers],
                  "failed_replies": sum("cannot answer" in a[1] or "failed to load" in a[1] for a in answers)}))
"""


def measure(system: str, models: dict[str, str], image: str, args, work: Path) -> dict:
    from gradio_client import Client, handle_file

    (work / system).mkdir(parents=True, exist_ok=True)
    server = Server({**models, "customer-service": UNREACHABLE_MODEL}, work / system, prelude=SYSTEMS[system])
    try:
        server.wait_ready()
        client = Client(server.url, verbose=False, analytics_enabled=False)

        def call() -> float:
            started = time.perf_counter()
            client.predict(handle_file(image), api_name="/classify_image")
            return time.perf_counter() - started

        for _ in range(3):
            call()  # loads the medical model, warms its caches
        before = [call() for _ in range(args.calls)]
        hammer = subprocess.Popen([sys.executable, "-c", HAMMER, server.url, str(args.requests), str(args.threads)],
                                  env=bench_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        during = []
        while hammer.poll() is None or len(during) < args.calls:
            during.append(call())
        out, err = hammer.communicate()
        if hammer.returncode != 0:
            raise RuntimeError(f"the chat clients failed:\n{err[-2000:]}")
        chats = json.loads(out.strip().splitlines()[-1])
    finally:
        server.stop()
    row = {"system": system, "calls_before": len(before), "calls_during": len(during),
           "p50_before_ms": 1000 * median(before), "p95_before_ms": 1000 * percentile(before, 95),
           "p50_during_ms": 1000 * median(during), "p95_during_ms": 1000 * percentile(during, 95),
           "chat_requests": args.requests, "chat_seconds": chats["seconds"],
           "chat_reply_p50_s": median(chats["reply_seconds"]), "chat_failed_replies": chats["failed_replies"]}
    row["p95_ratio"] = row["p95_during_ms"] / row["p95_before_ms"]
    row["p50_ratio"] = row["p50_during_ms"] / row["p50_before_ms"]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=50, help="chat requests to the failing model per round")
    parser.add_argument("--threads", type=int, default=5, help="client threads sending them")
    parser.add_argument("--calls", type=int, default=40, help="medical-tab calls before (and at least during)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from: " + ", ".join(SYSTEMS))
    parser.add_argument("--medical-image-model", help="folder (default: the cached default, else a stand-in)")
    parser.add_argument("--voice-command-model", help="folder (default: the cached default, else a stand-in)")
    parser.add_argument("--quick", action="store_true", help="tiny random models, one round, 12 requests, 10 calls")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--work-dir", help="models, inputs and server logs go here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.calls = 1, min(args.requests, 12), min(args.calls, 10)
    systems = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; pick from {', '.join(SYSTEMS)}")
    info = machine()
    print_header("A failing model and the other tabs' latency", info)
    with tempfile.TemporaryDirectory(prefix="fmhub-failing-") as tmp:
        work = Path(args.work_dir or tmp)
        given = {"medical-image": args.medical_image_model, "voice-command": args.voice_command_model}
        resolved = resolve_models(given, work, args.quick, scenarios=("medical-image", "voice-command"))
        models = {scenario: r["folder"] for scenario, r in resolved.items()}
        image = sample_inputs("medical-image", work / "inputs", 1, synthetic=args.quick)[0]
        rows = []
        for round_index in range(args.rounds):
            for system in systems:
                row = measure(system, models, image, args, work / f"round{round_index}")
                row["round"] = round_index + 1
                rows.append(row)
                print(f"round {row['round']} {system}: medical p95 {row['p95_before_ms']:.0f} -> "
                      f"{row['p95_during_ms']:.0f} ms (x{row['p95_ratio']:.2f}); {args.requests} chat requests in "
                      f"{row['chat_seconds']:.1f} s", flush=True)
    summary = {}
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        summary[system] = {"p95_ratio_median": median([r["p95_ratio"] for r in mine]),
                           "p95_ratio_max": max(r["p95_ratio"] for r in mine),
                           "p50_ratio_median": median([r["p50_ratio"] for r in mine]),
                           "chat_seconds_median": median([r["chat_seconds"] for r in mine])}
    table = [[r["round"], r["system"], fmt(r["p50_before_ms"], 0), fmt(r["p95_before_ms"], 0),
              fmt(r["p50_during_ms"], 0), fmt(r["p95_during_ms"], 0), fmt(r["p95_ratio"], 2),
              fmt(r["chat_seconds"], 1), fmt(r["chat_reply_p50_s"], 2)] for r in rows]
    print()
    print(markdown_table(["round", "system", "p50 before ms", "p95 before ms", "p50 during ms", "p95 during ms",
                          "p95 ratio", "chat requests took s", "chat reply p50 s"], table))
    for system, s in summary.items():
        print(f"{system}: medical p95 during / before, median x{s['p95_ratio_median']:.2f} "
              f"(max x{s['p95_ratio_max']:.2f})")
    write_json(args.output, {"machine": info, "models": resolved, "failing_model": UNREACHABLE_MODEL,
                             "requests": args.requests, "threads": args.threads, "calls": args.calls,
                             "rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
