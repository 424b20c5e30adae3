"""Footprint of the hub app: cold-start time of `python app.py` and resident memory with all three tabs used.

Each repetition starts a fresh `python app.py --port P` (models chosen the way a user chooses them: the cached
embedded defaults, or `FMHUB_<SCENARIO>_MODEL` for a folder), times it until `GET /` answers HTTP 200, then uses each
tab once through `gradio_client` (`/classify_intent`, `/classify_image`, `/classify_audio`; models load on first
use) and reads the server's resident memory after each. The operating system's file cache is warm (the same files
were read before), so "cold" means a new process, not a cold disk.

    python benchmarks/footprint.py --output benchmarks/results/footprint.json
    python benchmarks/footprint.py --quick --output /tmp/footprint.json     # tiny models: checks the script
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

ENDPOINTS = {"customer-service": "/classify_intent", "medical-image": "/classify_image",
             "voice-command": "/classify_audio"}


def memory_mb(pid: int) -> dict:
    """Resident and peak resident (VmHWM) memory of the server process and its children, in MB."""
    import psutil

    process = psutil.Process(pid)
    rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
    peak = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return {"rss_mb": rss / 2**20, "peak_rss_mb": peak}


def one_start(models: dict, env_models: dict, inputs: dict, threads: int, timeout: float, log: Path,
              lock: str | None = None) -> dict:
    with common.measuring(lock):
        return _one_start(models, env_models, inputs, threads, timeout, log)


def _one_start(models: dict, env_models: dict, inputs: dict, threads: int, timeout: float, log: Path) -> dict:
    from gradio_client import Client, handle_file

    port = common.free_port()
    env = common.bench_env(threads, **env_models)
    with open(log, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=common.ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ready = common.wait_for_http(f"http://127.0.0.1:{port}/", timeout, proc)
            if ready is None:
                raise RuntimeError(f"the app did not answer within {timeout:.0f} s:\n{common.tail(log)}")
            ready = time.perf_counter() - started
            record = {"ready_s": ready, "after_start": memory_mb(proc.pid), "tabs": {}}
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            for scenario, endpoint in ENDPOINTS.items():
                item = inputs[scenario]
                argument = item if scenario == "customer-service" else handle_file(item)
                first = time.perf_counter()
                client.predict(argument, api_name=endpoint)
                first = time.perf_counter() - first
                second = time.perf_counter()
                client.predict(argument, api_name=endpoint)
                second = time.perf_counter() - second
                record["tabs"][scenario] = {"first_request_s": first, "second_request_s": second,
                                            "model": models[scenario]["kind"], **memory_mb(proc.pid)}
            record["after_all_tabs"] = memory_mb(proc.pid)
            return record
        finally:
            common.stop_process(proc)


def table(report: dict) -> str:
    runs = report["runs"]
    med = common.median
    rows = [
        ["cold start: `python app.py` to HTTP 200 on `/` (s)", common.fmt(med([r["ready_s"] for r in runs]), 2),
         ", ".join(common.fmt(r["ready_s"], 2) for r in runs)],
        ["resident memory after start (MB)", common.fmt(med([r["after_start"]["rss_mb"] for r in runs]), 0), ""],
    ]
    for scenario in ENDPOINTS:
        first = med([r["tabs"][scenario]["first_request_s"] for r in runs])
        second = med([r["tabs"][scenario]["second_request_s"] for r in runs])
        rss = med([r["tabs"][scenario]["rss_mb"] for r in runs])
        rows.append([f"{scenario} tab, {ENDPOINTS[scenario]}: first request (loads the model) / second (s); "
                     "memory after (MB)", f"{common.fmt(first, 2)} / {common.fmt(second, 2)}; {common.fmt(rss, 0)}",
                     runs[0]["tabs"][scenario]["model"]])
    rows.append(["resident memory with all three tabs used once (MB)",
                 common.fmt(med([r["after_all_tabs"]["rss_mb"] for r in runs]), 0), ""])
    rows.append(["peak resident memory of the server (VmHWM, MB)",
                 common.fmt(med([r["after_all_tabs"]["peak_rss_mb"] for r in runs]), 0), ""])
    return common.markdown_table(["measure", f"median of {len(runs)}", "notes / runs"], rows) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models: checks the script, not speed")
    parser.add_argument("--reps", type=int, default=3, help="app starts (median)")
    for scenario in common.SCENARIOS:
        parser.add_argument(f"--{scenario}-model", help=f"saved {scenario} model folder (default: the cached one)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the app")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the app")
    parser.add_argument("--work-dir", help="inputs and stand-in models go here (default: a temporary folder)")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--lock", help="flock file held during each start, which begins only on a quiet machine")
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fmhub-bench-footprint-"))
    work.mkdir(parents=True, exist_ok=True)
    given = {s: getattr(args, s.replace("-", "_") + "_model") for s in common.SCENARIOS}
    with common.measuring(args.lock, quiet_below=1.0):  # building stand-in models is CPU work too
        models = common.resolve_models(given, work, args.quick)
        inputs = {s: common.sample_inputs(s, work / "inputs" / s, 1, synthetic=args.quick)[0]
                  for s in common.SCENARIOS}
    # a cached default is what `python app.py` serves by itself; anything else is chosen the documented way
    env_models = {"FMHUB_" + s.upper().replace("-", "_") + "_MODEL": m["folder"]
                  for s, m in models.items() if not m["kind"].startswith("fine-tuned embedded default")}
    info = common.machine()
    runs = []
    for rep in range(1 if args.quick else max(1, args.reps)):
        runs.append(one_start(models, env_models, inputs, args.threads, args.timeout, work / f"app-{rep}.log",
                              args.lock))
    report = {"benchmark": "footprint", "quick": args.quick, "machine": info, "threads": args.threads,
              "models": models, "runs": runs}
    report["cold_start_s"] = common.median([r["ready_s"] for r in runs])
    report["rss_after_all_tabs_mb"] = common.median([r["after_all_tabs"]["rss_mb"] for r in runs])
    common.print_header("Footprint: python app.py", info)
    print(table(report))
    common.write_json(args.output, report)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
