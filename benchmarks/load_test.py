"""Load test of the hub app (RELIABILITY.md item 22): the server in its own process, gradio_client from many threads.

    python benchmarks/load_test.py                          # the cached defaults, 8 threads, 2 rounds of 60 s
    python benchmarks/load_test.py --quick --models customer-service=runs/cs medical-image=runs/mi \\
        voice-command=runs/vc --output load.json

It starts `python app.py` with one model per tab, works out the expected answer of every request with one single call
each, then runs identical rounds in which every thread cycles over the three tabs (chat, classify_image,
classify_audio) for a bounded time. It reports per round and tab: p50/p95 latency, errors, deliberate queue-full
refusals (counted apart) and cross-talk (an answer that is not the one its own request must get); the server's RSS
before the rounds and after each, and the number of files in its upload cache after each. It prints a Markdown table,
writes everything as JSON (--output), and exits 1 when a check fails: an unexpected error, cross-talk, memory after
the last round more than 10 % above the first, or a cache that kept growing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fmhub.ui.customer_service import EXAMPLES  # noqa: E402

TABS = ("customer-service", "medical-image", "voice-command")
API = {"customer-service": "/chat", "medical-image": "/classify_image", "voice-command": "/classify_audio"}
SCORE_TOLERANCE = 1e-3  # the same input may meet a different batch on the server: tiny float differences only
MEMORY_TOLERANCE = 0.10
# the chat tab's own examples (greeting, orders, billing, hand-off, out of scope) plus one it does not show
CHAT_MESSAGES = [*EXAMPLES, "how do I reset my password"]


# -- the server ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process: psutil when installed, else /proc/<pid>/status."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {pid}") from None


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


class Server:
    """`python app.py` in its own process, with an upload cache folder of its own (GRADIO_TEMP_DIR)."""

    def __init__(self, models: dict[str, str], workdir: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.cache = workdir / "gradio-cache"
        self.log_path = workdir / "server.log"
        command = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(self.port)]
        for scenario, folder in models.items():
            command += [f"--{scenario}-model", folder]
        env = dict(os.environ, GRADIO_TEMP_DIR=str(self.cache), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
        self.command = command
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "gradio_api/info", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def rss(self) -> int:
        return rss_bytes(self.process.pid)

    def cache_files(self) -> int:
        return count_files(self.cache)

    def log_tail(self, chars: int = 3000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        self._log.close()


# -- the requests -------------------------------------------------------------------------------------------------
@dataclass
class Request:
    tab: str
    name: str
    payload: object  # a message (chat) or a file path (image, audio)
    expected: dict = field(default_factory=dict)


def make_inputs(folder: Path, per_tab: int = 4) -> dict[str, list[Request]]:
    """Distinct inputs per tab: chat messages, embedded test images (both classes), held-out test clips of different
    commands padded with silence to different lengths (so every answer names its clip by its duration too)."""
    import numpy as np
    from PIL import Image

    from fmhub import audio
    from fmhub.data import medical_synth
    from fmhub.data import speech_corpus as corpus
    from fmhub.data.audio_data import embedded_corpus_path

    folder.mkdir(parents=True, exist_ok=True)
    requests: dict[str, list[Request]] = {"customer-service": [
        Request("customer-service", f"message {i}", text) for i, text in enumerate(CHAT_MESSAGES[: max(per_tab, 2)])
    ]}
    images, labels, _ = medical_synth.generate(2 * per_tab + 4, size=128, seed=11, split="test")
    order = [int(i) for i in np.flatnonzero(labels == 0)[: per_tab // 2]]
    order += [int(i) for i in np.flatnonzero(labels == 1)[: per_tab - len(order)]]
    requests["medical-image"] = []
    for k, i in enumerate(order):
        path = folder / f"image_{k}_{['normal', 'lesion'][int(labels[i])]}.png"
        Image.fromarray(images[i]).save(path)
        requests["medical-image"].append(Request("medical-image", path.name, str(path)))
    waves, clip_labels, _ = corpus.load_corpus(embedded_corpus_path())["test"]
    requests["voice-command"] = []
    for k, label in enumerate(corpus.COMMANDS[:per_tab]):
        wave = waves[clip_labels.index(label)]
        padded = np.concatenate([wave, np.zeros(int(k * 0.25 * audio.SAMPLE_RATE), np.float32)])
        path = audio.write_wav(folder / f"clip_{k}_{label}.wav", padded)
        requests["voice-command"].append(Request("voice-command", path.name, str(path)))
    return requests


def call(client, request: Request):
    from gradio_client import handle_file

    if request.tab == "customer-service":
        return client.predict(request.payload, [], api_name=API[request.tab])
    return client.predict(handle_file(request.payload), api_name=API[request.tab])


def answer_of(request: Request, output) -> dict:
    """The part of a response that identifies the request's answer."""
    if request.tab == "customer-service":
        history, _box, details, _summary = output
        return {"echo": history[-2]["content"], "label": details["label"], "intent": details["intent"],
                "score": details["score"], "answer": history[-1]["content"]}
    if request.tab == "medical-image":
        scores, overlay, notice, _summary = output
        return {"label": scores["label"], "scores": {c["label"]: c["confidence"] for c in scores["confidences"]},
                "notice": notice, "overlay": bool(overlay)}
    _verdict, result, _plot, _device, _summary = output
    return {"label": result["label"], "command": result["command"], "scores": result["scores"],
            "duration": result["duration"], "windows": result["windows"]}


def mismatch(expected: dict, got: dict) -> str | None:
    """Why `got` is not the answer `expected` (cross-talk or a wrong answer), or None when it matches."""
    for key, want in expected.items():
        have = got.get(key)
        if key in ("scores", "score"):
            want_d, have_d = (want, have) if isinstance(want, dict) else ({"": want}, {"": have})
            if not isinstance(have_d, dict) or set(want_d) != set(have_d):
                return f"{key}: {have!r} != {want!r}"
            worst = max((abs(float(want_d[k]) - float(have_d[k])) for k in want_d), default=0.0)
            if worst > SCORE_TOLERANCE:
                return f"{key} differ by {worst:.4f}"
        elif have != want:
            return f"{key}: {have!r} != {want!r}"
    return None


def is_refusal(err: Exception) -> bool:
    """Gradio's deliberate refusal when the queue is full (max_size reached)."""
    text = str(err).lower()
    return "queue is full" in text or ("queue" in text and "full" in text)


# -- a round ------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    tab: str
    name: str
    seconds: float
    status: str  # ok | error | refused | cross_talk
    detail: str = ""


def run_round(url: str, requests: dict[str, list[Request]], threads: int, seconds: float) -> list[Outcome]:
    from gradio_client import Client

    clients = [Client(url, verbose=False, download_files=False) for _ in range(threads)]
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    start = threading.Barrier(threads + 1)
    deadline = [0.0]

    def worker(index: int) -> None:
        client, mine, k = clients[index], [], index
        start.wait()
        while time.monotonic() < deadline[0]:
            tab = TABS[k % len(TABS)]
            request = requests[tab][(k // len(TABS) + index) % len(requests[tab])]
            k += 1
            began = time.perf_counter()
            try:
                got = answer_of(request, call(client, request))
                why = mismatch(request.expected, got)
                status, detail = ("ok", "") if why is None else ("cross_talk", f"{request.name}: {why}")
            except Exception as err:  # noqa: BLE001 - every failure is counted and reported
                status = "refused" if is_refusal(err) else "error"
                detail = f"{request.name}: {type(err).__name__}: {str(err)[:300]}"
            mine.append(Outcome(tab, request.name, time.perf_counter() - began, status, detail))
        with lock:
            outcomes.extend(mine)

    pool = [threading.Thread(target=worker, args=(i,), name=f"load-{i}") for i in range(threads)]
    for t in pool:
        t.start()
    deadline[0] = time.monotonic() + seconds
    start.wait()
    for t in pool:
        t.join()
    for client in clients:
        client.close()
    return outcomes


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarise(outcomes: list[Outcome], seconds: float) -> dict:
    tabs = {}
    for tab in TABS:
        mine = [o for o in outcomes if o.tab == tab]
        ok = [o.seconds for o in mine if o.status == "ok"]
        tabs[tab] = {
            "requests": len(mine),
            "ok": len(ok),
            "errors": sum(o.status == "error" for o in mine),
            "refused": sum(o.status == "refused" for o in mine),
            "cross_talk": sum(o.status == "cross_talk" for o in mine),
            "p50_ms": None if not ok else round(1000 * percentile(ok, 50), 1),
            "p95_ms": None if not ok else round(1000 * percentile(ok, 95), 1),
            "per_second": round(len(mine) / seconds, 2) if seconds else None,
            "samples": sorted({o.detail for o in mine if o.status != "ok"})[:5],
        }
    return tabs


# -- the whole test -----------------------------------------------------------------------------------------------
def resolve_models(pairs: list[str] | None) -> dict[str, str]:
    """`scenario=folder` pairs (or three folders in tab order); a tab left out uses its cached default."""
    from fmhub.paths import default_model_dir

    models: dict[str, str] = {}
    for i, item in enumerate(pairs or []):
        if "=" in item:
            scenario, folder = item.split("=", 1)
        elif len(pairs) == len(TABS):
            scenario, folder = TABS[i], item
        else:
            raise SystemExit(f"--models: give scenario=folder pairs ({', '.join(TABS)}) or 3 folders in this order")
        if scenario not in TABS:
            raise SystemExit(f"--models: unknown scenario {scenario!r} (expected one of {', '.join(TABS)})")
        models[scenario] = folder
    for scenario in TABS:
        if scenario not in models:
            folder = default_model_dir(scenario)
            if not (folder / "fmhub.json").is_file():
                raise SystemExit(f"no model for {scenario}: the embedded default is not cached in {folder} "
                                 f"(run `fmhub train --scenario {scenario}` or pass --models {scenario}=FOLDER)")
            models[scenario] = str(folder)
    for scenario, folder in models.items():
        if not Path(folder).is_dir():
            raise SystemExit(f"--models: {scenario} folder {folder} does not exist")
    return models


def run(args: argparse.Namespace) -> dict:
    from gradio_client import Client

    models = resolve_models(args.models)
    workdir = Path(tempfile.mkdtemp(prefix="fmhub-load-"))
    requests = make_inputs(workdir / "inputs")
    server = Server(models, workdir)
    report: dict = {
        "command": " ".join([Path(sys.executable).name, "benchmarks/load_test.py", *sys.argv[1:]]),
        "server_command": " ".join(server.command),
        "models": models, "threads": args.threads, "seconds_per_round": args.seconds, "rounds": [],
        "quick": args.quick,
    }
    try:
        server.wait_ready()
        report["rss_mb"] = {"started": round(server.rss() / 2**20, 1)}
        # the expected answer of every request: one single call each, nothing else running
        client = Client(server.url, verbose=False, download_files=False)
        for tab in TABS:
            for request in requests[tab]:
                request.expected = answer_of(request, call(client, request))
                if tab == "customer-service":
                    request.expected.pop("answer")  # covered by label/intent; echo + label identify the request
        client.close()
        report["expected"] = {r.name: r.expected for tab in TABS for r in requests[tab]}
        report["rss_mb"]["before"] = round(server.rss() / 2**20, 1)
        report["cache_files"] = {"before": server.cache_files()}
        for number in range(1, args.rounds + 1):
            began = time.monotonic()
            outcomes = run_round(server.url, requests, args.threads, args.seconds)
            elapsed = time.monotonic() - began
            time.sleep(1.0)  # let the server finish writing what it answered
            report["rounds"].append({"round": number, "seconds": round(elapsed, 1),
                                     "tabs": summarise(outcomes, elapsed)})
            report["rss_mb"][f"after_round_{number}"] = round(server.rss() / 2**20, 1)
            report["cache_files"][f"after_round_{number}"] = server.cache_files()
        if server.process.poll() is not None:
            raise RuntimeError(f"the server died during the test:\n{server.log_tail()}")
    finally:
        server.stop()
        report["server_log_tail"] = server.log_tail(2000)
    report["checks"] = checks(report)
    report["passed"] = all(c["passed"] for c in report["checks"].values() if c["enforced"])
    if report["passed"] and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        report["workdir"] = str(workdir)  # inputs, the server's log and its upload cache, for a look
    return report


def checks(report: dict) -> dict:
    rounds = report["rounds"]
    unexpected = sum(t["errors"] for r in rounds for t in r["tabs"].values())
    cross_talk = sum(t["cross_talk"] for r in rounds for t in r["tabs"].values())
    served = min((t["ok"] for r in rounds for t in r["tabs"].values()), default=0)
    rss, cache = report["rss_mb"], report["cache_files"]
    first, last = "after_round_1", f"after_round_{len(rounds)}"
    growth = (rss[last] - rss[first]) / rss[first] if len(rounds) > 1 else 0.0
    strict = not report["quick"]
    return {
        "no_unexpected_errors": {"passed": unexpected == 0, "value": unexpected, "enforced": True},
        "no_cross_talk": {"passed": cross_talk == 0, "value": cross_talk, "enforced": True},
        "every_tab_answered": {"passed": served > 0, "value": served, "enforced": True},
        "memory_flat": {"passed": growth <= MEMORY_TOLERANCE, "value": round(100 * growth, 1),
                        "unit": "% RSS after the last round vs after round 1", "enforced": strict},
        "cache_flat": {"passed": cache[last] <= cache[first], "value": cache[last] - cache[first],
                       "unit": "files added to the upload cache after round 1", "enforced": strict},
    }


def markdown(report: dict) -> str:
    names = {"customer-service": "chat", "medical-image": "classify_image", "voice-command": "classify_audio"}
    lines = [f"Load test: {report['threads']} threads, {len(report['rounds'])} rounds of "
             f"{report['seconds_per_round']:g} s (`{report['command']}`)", "",
             "| round | tab (api) | requests | ok | p50 ms | p95 ms | errors | queue-full refusals | cross-talk |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rounds"]:
        for tab, t in r["tabs"].items():
            lines.append(f"| {r['round']} | {tab} ({names[tab]}) | {t['requests']} | {t['ok']} | {t['p50_ms']} | "
                         f"{t['p95_ms']} | {t['errors']} | {t['refused']} | {t['cross_talk']} |")
    rss, cache = report["rss_mb"], report["cache_files"]
    stages = [k for k in rss if k != "started"]
    lines += ["", "| server | started | " + " | ".join(s.replace("_", " ") for s in stages) + " |",
              "|---|---:|" + "---:|" * len(stages),
              f"| RSS MB | {rss['started']} | " + " | ".join(str(rss[s]) for s in stages) + " |",
              "| upload cache files | - | " + " | ".join(str(cache.get(s, "-")) for s in stages) + " |", ""]
    for name, c in report["checks"].items():
        mark = "pass" if c["passed"] else ("FAIL" if c["enforced"] else "fail (not enforced in --quick)")
        lines.append(f"- {name}: {mark} ({c['value']}{' ' + c['unit'] if 'unit' in c else ''})")
    for r in report["rounds"]:
        for tab, t in r["tabs"].items():
            for sample in t["samples"]:
                lines.append(f"  - round {r['round']} {tab}: {sample}")
    lines.append(f"\nresult: {'PASSED' if report['passed'] else 'FAILED'}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", metavar="SCENARIO=FOLDER",
                        help="a model folder per tab (default: the cached embedded defaults under FMHUB_HOME/models)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each round (default 60)")
    parser.add_argument("--rounds", type=int, default=2, help="identical rounds (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 threads, 3 s rounds; memory and cache growth reported, not enforced")
    parser.add_argument("--output", help="write the report as JSON here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (inputs, server log, upload cache); it is always kept on failure")
    args = parser.parse_args(argv)
    if args.quick:
        args.threads, args.seconds = 2, 3.0
    if args.threads < 1 or args.seconds <= 0 or args.rounds < 1:
        parser.error("--threads, --seconds and --rounds must be positive")
    return args


def main(argv=None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    report = run(args)
    print(markdown(report))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
