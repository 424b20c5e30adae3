"""Written replies under load: 8 chats at once against `python app.py --replies generate`, rounds of 60 s.

The hub app runs in its own process with the reply model; each client thread (gradio_client) sends chat messages of
the reply evaluation set (`benchmarks/data/reply_eval.jsonl`, a different message each time) one after another for
--seconds. Every reply must come back without an error; the chat's intermediate outputs (the reply growing word by
word) are counted, as is how many replies the model wrote and how long they queued. The server's memory is read
before the rounds and after each: after the first round it must stay flat.

    FMHUB_HOME=<home with the defaults> python benchmarks/reply_load.py --output benchmarks/results/reply_load.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, bench_env, free_port, stop_process, wait_for_http, write_json  # noqa: E402
from load_test import make_client, rss_bytes  # noqa: E402

EVAL_SET = ROOT / "benchmarks" / "data" / "reply_eval.jsonl"


def chat_until(url: str, messages: list[str], stop_at: float, out: list, errors: list) -> None:
    client = make_client(url)
    i = 0
    while time.perf_counter() < stop_at:
        message = messages[i % len(messages)]
        i += 1
        t0 = time.perf_counter()
        try:
            job = client.submit(message, [], api_name="/chat")
            final = job.result(timeout=300)
            updates = len(job.outputs())
        except Exception as err:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(err).__name__}: {str(err)[:200]}")
            continue
        details = final[2] or {}
        out.append({"seconds": time.perf_counter() - t0, "updates": updates,
                    "source": (details.get("reply") or {}).get("reply_source"),
                    "queued": (details.get("reply") or {}).get("queued_seconds", 0.0)})


def run_round(url: str, rows: list[str], threads: int, seconds: float) -> dict:
    out, errors = [], []
    stop_at = time.perf_counter() + seconds
    workers = [threading.Thread(target=chat_until, args=(url, rows[k::threads], stop_at, out, errors))
               for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    written = [o for o in out if o["source"] == "generated"]
    return {
        "replies": len(out), "errors": len(errors), "error_samples": errors[:3],
        "generated": len(written), "template": len(out) - len(written),
        "streamed_replies": sum(o["updates"] > 2 for o in written),
        "reply_seconds_p50": statistics.median(o["seconds"] for o in out) if out else None,
        "reply_seconds_max": max((o["seconds"] for o in out), default=None),
        "queued_seconds_p50": statistics.median(o["queued"] for o in out) if out else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", help="customer-service model (default: the embedded default)")
    parser.add_argument("--reply-model", help="reply model (default: the PyPI SmolLM2 GGUF)")
    parser.add_argument("--output")
    args = parser.parse_args()

    rows = [json.loads(line)["text"] for line in EVAL_SET.read_text().splitlines() if line.strip()]
    port = free_port()
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--replies", "generate"]
    cmd += ["--customer-service-model", args.model] if args.model else []
    cmd += ["--reply-model", args.reply_model] if args.reply_model else []
    server = subprocess.Popen(cmd, cwd=ROOT, env=bench_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        if wait_for_http(url, 300, server) is None:
            raise SystemExit(f"the app did not start: {server.stderr.read()[-2000:] if server.poll() else ''}")
        warm = make_client(url)
        deadline = time.perf_counter() + 300
        while time.perf_counter() < deadline:  # the reply model loads in the background: wait until it writes
            details = warm.predict("where is my parcel, it should have come monday", [], api_name="/chat")[2]
            if (details.get("reply") or {}).get("template_because") != "reply model still loading":
                break
            time.sleep(2)
        report = {"threads": args.threads, "seconds": args.seconds, "rss_mb_before": rss_bytes(server.pid) / 2**20,
                  "rounds": []}
        for n in range(args.rounds):
            result = run_round(url, rows, args.threads, args.seconds)
            result["rss_mb_after"] = rss_bytes(server.pid) / 2**20
            report["rounds"].append(result)
            print(json.dumps({"round": n + 1, **result}), flush=True)
        growth = [r["rss_mb_after"] for r in report["rounds"]]
        report["rss_growth_after_first_round_mb"] = growth[-1] - growth[0]
        report["errors"] = sum(r["errors"] for r in report["rounds"])
        print(json.dumps({k: v for k, v in report.items() if k != "rounds"}, indent=2))
        write_json(args.output, report)
        return 1 if report["errors"] else 0
    finally:
        stop_process(server)


if __name__ == "__main__":
    raise SystemExit(main())
