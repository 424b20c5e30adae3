"""Serving: fmhub's Predictor against `transformers.pipeline` (text, audio) or a plain timm forward (image).

Both sides load the same saved model folder and get the same inputs: messages from the embedded test split, PNG
files, 1 s WAV files (decoded with soundfile on both sides). For each scenario:

* latency at batch 1: one request at a time, the systems alternating request by request; p50 and p95;
* throughput under N concurrent requests (default 8 threads, each sending its next request as soon as the previous
  one is answered); fmhub's Predictor merges requests that arrive together (server-side micro-batching,
  `fmhub.serving.MicroBatcher`), the baseline runs one pipeline call per request, as a hand-written app would.
  "fmhub, no micro-batching" is the same Predictor without it. Repetitions interleave the systems; medians;
* the Gradio overhead: a `gradio_client` round trip to the launched hub app against calling the same Predictor
  work directly in Python.

    python benchmarks/serving.py --output benchmarks/results/serving.json
    python benchmarks/serving.py --customer-service-model runs/my-intents --scenarios customer-service
    python benchmarks/serving.py --quick --output /tmp/serving.json      # tiny models: checks the script, not speed

Models: `--<scenario>-model FOLDER`, else the cached embedded default (fine-tuned), else the default backbone with an
untrained head (serving cost does not depend on what the head learned); the JSON says which was measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

FULL = {"latency_requests": {"customer-service": 100, "medical-image": 40, "voice-command": 60},
        "concurrent_requests": {"customer-service": 240, "medical-image": 96, "voice-command": 160},
        "gradio_requests": {"customer-service": 30, "medical-image": 12, "voice-command": 12}}
QUICK = {"latency_requests": {s: 6 for s in common.SCENARIOS},
         "concurrent_requests": {s: 16 for s in common.SCENARIOS},
         "gradio_requests": {s: 2 for s in common.SCENARIOS}}
BASELINE_TITLES = {"customer-service": "transformers.pipeline", "medical-image": "plain timm forward",
                   "voice-command": "transformers.pipeline"}


# -- the systems ----------------------------------------------------------------------------------------------------
def fmhub_call(predictor):
    return lambda item: predictor.predict([item])[0]


def baseline_call(scenario: str, folder: str):
    """One request = one call, as a hand-written app would make it; returns (call, top-label function)."""
    if scenario == "customer-service":
        from transformers import pipeline

        pipe = pipeline("text-classification", model=folder, device="cpu")
        return (lambda text: pipe(text, top_k=None)), (lambda out: out[0]["label"])
    if scenario == "voice-command":
        import soundfile as sf
        from transformers import pipeline

        pipe = pipeline("audio-classification", model=folder, device="cpu")

        def classify(path):
            wave, rate = sf.read(path, dtype="float32", always_2d=True)
            return pipe({"raw": wave.mean(axis=1), "sampling_rate": rate}, top_k=None)

        return classify, (lambda out: out[0]["label"])
    import json

    import timm
    import timm.data
    import torch
    from PIL import Image

    model = timm.create_model("local-dir:" + str(Path(folder).resolve()), pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model), is_training=False)
    labels = json.loads((Path(folder) / "config.json").read_text()).get("label_names")

    @torch.no_grad()
    def classify(path):
        pixels = transform(Image.open(path).convert("RGB")).unsqueeze(0)
        return model(pixels).softmax(-1)[0].numpy()

    return classify, (lambda out: labels[int(out.argmax())] if labels else int(out.argmax()))


# -- measurements ---------------------------------------------------------------------------------------------------
def latency(systems: dict, inputs: list, warmup: int = 3) -> dict:
    """Sequential requests, systems alternating request by request (and which goes first), in milliseconds."""
    names = list(systems)
    for name in names:
        for item in inputs[:warmup]:
            systems[name](item)
    times = {name: [] for name in names}
    counters = common.cpu_counters()
    for i, item in enumerate(inputs):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            started = time.perf_counter()
            systems[name](item)
            times[name].append((time.perf_counter() - started) * 1000)
    load = common.other_load(counters, common.cpu_counters())
    return {name: {"p50_ms": common.percentile(t, 50), "p95_ms": common.percentile(t, 95), "n": len(t),
                   "other_load": load} for name, t in times.items()}


def concurrent(call, inputs: list, threads: int) -> dict:
    """`threads` clients, each sending its next request when the previous one is answered."""
    lock = threading.Lock()
    state = {"next": 0, "errors": 0, "first_error": None}
    latencies: list[float] = []

    def client() -> None:
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= len(inputs):
                return
            started = time.perf_counter()
            try:
                call(inputs[i])
            except Exception as err:  # counted: a baseline that is not thread-safe shows it here
                with lock:
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or f"{type(err).__name__}: {err}"[:200]
            with lock:
                latencies.append((time.perf_counter() - started) * 1000)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    counters = common.cpu_counters()
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    return {"requests_per_s": len(inputs) / wall, "p50_ms": common.percentile(latencies, 50),
            "p95_ms": common.percentile(latencies, 95), "errors": state["errors"], "first_error": state["first_error"],
            "other_load": common.other_load(counters, common.cpu_counters())}


def concurrent_undisturbed(call, inputs: list, threads: int, retries: int) -> dict:
    """`concurrent`, measured again (up to `retries` times) while other processes loaded the machine."""
    for attempt in range(retries + 1):
        result = concurrent(call, inputs, threads)
        load = result["other_load"]
        if load is None or load <= common.DISTURBED or attempt == retries:
            return {**result, "attempts": attempt + 1}
        print(f"note: other processes used {load:.0%} of the machine; measuring again", file=sys.stderr)


def gradio_overhead(models: dict, scenarios: list[str], inputs: dict, counts: dict) -> dict:
    """gradio_client round trips to the launched hub app vs the same work called directly."""
    from gradio_client import Client, handle_file

    from fmhub.ui.app import AppConfig, build_app, launch

    config = AppConfig(models={s: models[s]["folder"] for s in scenarios}, scenarios=tuple(scenarios),
                       bootstrap=False)
    config.port = None  # Gradio picks a free port
    demo, slots = build_app(config)
    launch(demo, config, prevent_thread_lock=True, quiet=True)
    out = {}
    try:
        client = Client(demo.local_url, verbose=False)
        for scenario in scenarios:
            predictor = slots[scenario].get()
            if scenario == "customer-service":
                remote = lambda x: client.predict(x, api_name="/classify_intent")
                direct = lambda x, p=predictor: p.predict([x])[0]
                what = "/classify_intent: the prediction dict"
            elif scenario == "medical-image":
                remote = lambda x: client.predict(handle_file(x), api_name="/classify_image")
                direct = lambda x, p=predictor: p.predict([Path(x)], gradcam=True)[0]
                what = "/classify_image: probabilities and the Grad-CAM overlay (a PNG)"
            else:
                from fmhub.ui.voice_command import DeviceState, plot_clip, render_device

                def direct(x, predictor=predictor):
                    wave = predictor.load(x)
                    result = predictor.classify(wave)
                    return plot_clip(wave, result["detections"]), render_device(DeviceState())

                remote = lambda x: client.predict(handle_file(x), api_name="/classify_audio")
                what = "/classify_audio: verdict, prediction, waveform/spectrogram plot, device panel"
            items = inputs[scenario][: counts[scenario]]
            timing = latency({"gradio_client": remote, "direct": direct}, items, warmup=1)
            out[scenario] = {
                "endpoint": what,
                "round_trip_p50_ms": timing["gradio_client"]["p50_ms"],
                "direct_p50_ms": timing["direct"]["p50_ms"],
                "overhead_p50_ms": timing["gradio_client"]["p50_ms"] - timing["direct"]["p50_ms"],
                "n": timing["direct"]["n"],
            }
    finally:
        demo.close()
    return out


def benchmark(models: dict, scenarios: list[str], sizes: dict, reps: int, threads: int, concurrency: int,
              work: Path, with_gradio: bool, quick: bool, lock: str | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    results, all_inputs = {}, {}
    for scenario in scenarios:
        with common.measuring(lock):
            results[scenario], all_inputs[scenario] = measure_scenario(
                scenario, models[scenario]["folder"], sizes, reps, concurrency, work, quick)
    gradio = {}
    if with_gradio:
        with common.measuring(lock):
            gradio = gradio_overhead(models, scenarios, all_inputs, sizes["gradio_requests"])
    return {"scenarios": results, "gradio": gradio}


def measure_scenario(scenario: str, folder: str, sizes: dict, reps: int, concurrency: int, work: Path,
                     quick: bool) -> tuple[dict, list]:
    from fmhub.registry import get_scenario
    from fmhub.serving import load_predictor

    n_latency, n_concurrent = sizes["latency_requests"][scenario], sizes["concurrent_requests"][scenario]
    inputs = common.sample_inputs(scenario, work / "inputs" / scenario, max(n_latency, n_concurrent),
                                  synthetic=quick)
    batched = load_predictor(scenario, folder)  # what the app and the CLI use
    plain = get_scenario(scenario).predictor(Path(folder))  # the same, without micro-batching
    base, top_label = baseline_call(scenario, folder)
    agree = sum(batched.predict([x])[0]["label"] == top_label(base(x)) for x in inputs[:20])
    single = latency({"fmhub": fmhub_call(batched), "baseline": base}, inputs[:n_latency])
    loaded = {"fmhub": fmhub_call(batched), "fmhub, no micro-batching": fmhub_call(plain), "baseline": base}
    runs = {name: [] for name in loaded}
    batcher = batched.__dict__.get("predict")  # the MicroBatcher, where there is one

    def counts():
        return getattr(batcher, "requests", 0), getattr(batcher, "batches", 0)

    served_before = counts()
    for _ in range(reps):  # interleaved: A B C A B C ...
        for name, call in loaded.items():
            runs[name].append(concurrent_undisturbed(call, inputs[:n_concurrent], concurrency, 0 if quick else 2))
    served = tuple(after - before for after, before in zip(counts(), served_before))
    under_load = {
        name: {
            "requests_per_s": common.median([r["requests_per_s"] for r in rs]),
            "requests_per_s_runs": [r["requests_per_s"] for r in rs],
            "p50_ms": common.median([r["p50_ms"] for r in rs]),
            "p95_ms": common.median([r["p95_ms"] for r in rs]),
            "errors": sum(r["errors"] for r in rs),
            "first_error": next((r["first_error"] for r in rs if r["first_error"]), None),
            "other_load_runs": [r["other_load"] for r in rs],
        }
        for name, rs in runs.items()
    }
    result = {
        "model": folder,
        "baseline": BASELINE_TITLES[scenario],
        "same_top_label": f"{agree}/{min(20, len(inputs))}",
        "batch1": single,
        "concurrent": under_load,
        "concurrency": concurrency,
        "mean_requests_per_merged_call": served[0] / served[1] if served[1] else None,
        "throughput_ratio_fmhub_over_baseline": common.ratio(under_load["fmhub"]["requests_per_s"],
                                                             under_load["baseline"]["requests_per_s"]),
        "p95_ratio_fmhub_over_baseline": common.ratio(single["fmhub"]["p95_ms"], single["baseline"]["p95_ms"]),
    }
    return result, inputs


def tables(report: dict, concurrency: int) -> str:
    rows = []
    for scenario, r in report["scenarios"].items():
        single, load = r["batch1"], r["concurrent"]
        rows.append([
            f"{scenario} ({common.SHORT[scenario]})", r["baseline"],
            f"{common.fmt(single['fmhub']['p50_ms'])} / {common.fmt(single['fmhub']['p95_ms'])}",
            f"{common.fmt(single['baseline']['p50_ms'])} / {common.fmt(single['baseline']['p95_ms'])}",
            common.fmt(load["fmhub"]["requests_per_s"]),
            common.fmt(load["fmhub, no micro-batching"]["requests_per_s"]),
            common.fmt(load["baseline"]["requests_per_s"]) + (f" ({load['baseline']['errors']} errors)"
                                                            if load["baseline"]["errors"] else ""),
            common.fmt(r["throughput_ratio_fmhub_over_baseline"], 2, "x"),
            common.fmt(r["mean_requests_per_merged_call"], 1),
            r["same_top_label"],
        ])
    main = common.markdown_table(
        ["scenario", "baseline", "fmhub p50 / p95 ms (batch 1)", "baseline p50 / p95 ms (batch 1)",
         f"fmhub req/s ({concurrency} concurrent)", "fmhub without micro-batching req/s", "baseline req/s",
         "throughput fmhub/baseline", "requests per merged call", "same top label"], rows)
    out = f"### Latency and throughput\n\n{main}\n"
    if report["gradio"]:
        rows = [[f"{s} ({common.SHORT[s]})", g["endpoint"], common.fmt(g["direct_p50_ms"]),
                 common.fmt(g["round_trip_p50_ms"]), common.fmt(g["overhead_p50_ms"])]
                for s, g in report["gradio"].items()]
        out += "\n### Gradio overhead (p50)\n\n" + common.markdown_table(
            ["scenario", "endpoint", "direct Python call ms", "gradio_client round trip ms", "overhead ms"], rows)
        out += "\n"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models: checks the script, not speed")
    parser.add_argument("--scenarios", nargs="+", choices=common.SCENARIOS, default=list(common.SCENARIOS))
    for scenario in common.SCENARIOS:
        parser.add_argument(f"--{scenario}-model", help=f"saved {scenario} model folder")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the concurrent run (median)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--no-gradio", action="store_true", help="skip the Gradio round-trip measurement")
    parser.add_argument("--work-dir", help="inputs and stand-in models go here (default: a temporary folder)")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--lock", help="flock file held while measuring, which starts only on a quiet machine")
    args = parser.parse_args(argv)
    os.environ.update({k: v for k, v in common.bench_env().items() if k in ("HF_HUB_OFFLINE", "TQDM_DISABLE",
                                                                             "TOKENIZERS_PARALLELISM",
                                                                             "GRADIO_ANALYTICS_ENABLED")})
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fmhub-bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    given = {s: getattr(args, s.replace("-", "_") + "_model") for s in common.SCENARIOS}
    with common.measuring(args.lock, quiet_below=1.0):  # building stand-in models is CPU work too
        models = common.resolve_models(given, work, args.quick, args.scenarios)
    info = common.machine()
    started = time.time()
    report = benchmark(models, args.scenarios, QUICK if args.quick else FULL, 1 if args.quick else args.reps,
                       args.threads, args.concurrency, work, not args.no_gradio, args.quick, args.lock)
    common.print_header("Serving: fmhub Predictor vs pipeline / plain timm", info)
    print(tables(report, args.concurrency))
    common.write_json(args.output, {"benchmark": "serving", "quick": args.quick, "machine": info,
                                    "threads": args.threads, "reps": 1 if args.quick else args.reps,
                                    "models": models, "seconds": round(time.time() - started, 1), **report})
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
