"""ONNX Runtime (int8 export, `fmhub export`) against the PyTorch Predictor, for every scenario, side by side.

For each scenario's model folder (default: the cached embedded default; exported first when it has no `onnx/`):

* accuracy (and, for customer service, out-of-scope recall) of `fmhub evaluate` on the test split, both runtimes;
* model file sizes (fp32 safetensors / ONNX, int8 ONNX);
* latency at batch 1 through the Predictor (`predict([item])`), the runtimes alternating request by request;
* throughput under 8 concurrent clients (each sends its next request when the previous one is answered), through
  the micro-batched Predictor the app and the CLI use; for audio also the PyTorch Predictor without micro-batching,
  which is how voice requests were served before (one forward pass per request). Repetitions interleave the systems.

    python benchmarks/onnx_runtime.py --output benchmarks/results/onnx_runtime.json
    python benchmarks/onnx_runtime.py --scenarios customer-service --customer-service-model runs/intents
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402
import serving  # noqa: E402

SIZES = {"latency": {"customer-service": 100, "medical-image": 40, "voice-command": 60},
         "concurrent": {"customer-service": 240, "medical-image": 96, "voice-command": 160}}


def _bytes(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


def readme_script(scenario: str, folder: Path, items: list, predictor, work: Path) -> dict:
    """The README's script for running an export without fmhub, in a process where `import fmhub` fails, against the
    ONNX Predictor's top label."""
    import subprocess

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    script = work / f"snippet-{scenario}.py"
    script.write_text(readme.split(f"<!-- snippet:{scenario} -->", 1)[1].split("```python\n", 1)[1].split("```")[0])
    items = list(dict.fromkeys(items))
    blocked = "import runpy, sys; sys.modules['fmhub'] = None; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0])"
    done = subprocess.run([sys.executable, "-c", blocked, str(script), str(folder), *items], capture_output=True,
                          text=True, cwd=work, timeout=600)
    if done.returncode:
        return {"error": done.stderr[-500:]}
    theirs = done.stdout.split("\n")[: len(items)]
    ours = [max(r["scores"], key=r["scores"].get) for r in predictor.predict(
        items if scenario == "customer-service" else [Path(x) for x in items])]
    return {"inputs": len(items), "same_top_label": sum(a == b for a, b in zip(theirs, ours, strict=True))}


def measure(scenario: str, folder: Path, work: Path, reps: int, concurrency: int) -> dict:
    from fmhub.export import export_model
    from fmhub.onnx_runtime import FP32_FILE, INT8_FILE, onnx_dir, read_report
    from fmhub.registry import get_scenario
    from fmhub.runner import evaluate
    from fmhub.serving import load_predictor

    report = read_report(folder)
    if report is None:
        started = time.perf_counter()
        report = export_model(folder)
        report["export_seconds_here"] = round(time.perf_counter() - started, 1)
    scores = {}
    for runtime in ("torch", "onnx"):
        results = evaluate(scenario, folder, None, str(work / f"eval-{scenario}-{runtime}"), runtime=runtime)
        scores[runtime] = {k: results.get(k) for k in ("accuracy", "macro_f1", "oos_recall", "near_miss_oos_recall",
                                                       "command_accuracy", "false_accepts_per_hour")
                           if results.get(k) is not None}
    inputs = common.sample_inputs(scenario, work / "inputs" / scenario,
                                  max(SIZES["latency"][scenario], SIZES["concurrent"][scenario]))
    torch_p = load_predictor(scenario, str(folder), "torch")
    onnx_p = load_predictor(scenario, str(folder), "onnx")
    same = sum(torch_p.predict([x])[0]["label"] == onnx_p.predict([x])[0]["label"] for x in inputs[:50])
    script = readme_script(scenario, folder, inputs[:50], onnx_p, work)
    single = serving.latency({"torch": serving.fmhub_call(torch_p), "onnx": serving.fmhub_call(onnx_p)},
                             inputs[:SIZES["latency"][scenario]])
    systems = {"torch": serving.fmhub_call(torch_p), "onnx": serving.fmhub_call(onnx_p)}
    if scenario == "voice-command":
        systems["torch, no micro-batching (before)"] = serving.fmhub_call(get_scenario(scenario).predictor(folder,
                                                                                                           "torch"))
    runs = {name: [] for name in systems}
    for _ in range(reps):
        for name, call in systems.items():
            runs[name].append(serving.concurrent(call, inputs[:SIZES["concurrent"][scenario]], concurrency))
    loaded = {name: {"requests_per_s": common.median([r["requests_per_s"] for r in rs]),
                     "requests_per_s_runs": [round(r["requests_per_s"], 2) for r in rs],
                     "p50_ms": common.median([r["p50_ms"] for r in rs]), "errors": sum(r["errors"] for r in rs)}
              for name, rs in runs.items()}
    weights = folder / "model.safetensors"
    out = {
        "model": str(folder), "served_file": report["serve"], "quantization": report["files"][report["serve"]][
            "quantization"], "export_parity": {k: v["parity"] for k, v in report["files"].items()},
        "bytes": {"safetensors": _bytes(weights), "onnx_fp32": _bytes(onnx_dir(folder) / FP32_FILE),
                  "onnx_int8": _bytes(onnx_dir(folder) / INT8_FILE)},
        "test": scores, "same_label_of_50_inputs": same,
        "readme_script_without_fmhub": script, "batch1": single, "concurrent": loaded,
        "concurrency": concurrency,
        "batch1_p50_speedup": common.ratio(single["torch"]["p50_ms"], single["onnx"]["p50_ms"]),
        "throughput_speedup": common.ratio(loaded["onnx"]["requests_per_s"], loaded["torch"]["requests_per_s"]),
    }
    if scenario == "voice-command":
        out["throughput_speedup_over_before"] = common.ratio(
            loaded["onnx"]["requests_per_s"], loaded["torch, no micro-batching (before)"]["requests_per_s"])
    if out["bytes"]["onnx_int8"] and out["bytes"]["onnx_fp32"]:
        out["int8_size_share_of_fp32"] = round(out["bytes"]["onnx_int8"] / out["bytes"]["onnx_fp32"], 3)
    return out


def table(results: dict) -> str:
    rows = []
    for scenario, r in results.items():
        t, o = r["test"]["torch"], r["test"]["onnx"]
        extra = ""
        if "oos_recall" in t:
            extra = f"; OOS recall {t['oos_recall']:.3f} -> {o['oos_recall']:.3f}"
        mb = r["bytes"]
        size = f"{(mb['onnx_fp32'] or 0) / 1e6:.1f} -> {(mb['onnx_int8'] or mb['onnx_fp32']) / 1e6:.1f} MB"
        thr = " / ".join(f"{name} {v['requests_per_s']:.1f}" for name, v in r["concurrent"].items())
        rows.append([common.SHORT[scenario], r["served_file"], f"{t['accuracy']:.4f} -> {o['accuracy']:.4f}{extra}",
                     size, f"{r['batch1']['torch']['p50_ms']:.1f} -> {r['batch1']['onnx']['p50_ms']:.1f} ms "
                     f"(x{r['batch1_p50_speedup']:.2f})", f"{thr} req/s (onnx/torch x{r['throughput_speedup']:.2f}"
                     + (f", over before x{r['throughput_speedup_over_before']:.2f}"
                        if "throughput_speedup_over_before" in r else "") + ")"])
    concurrency = next(iter(results.values()))["concurrency"]
    return common.markdown_table(["", "served", "test accuracy torch -> onnx", "ONNX fp32 -> served size",
                                  "batch-1 p50 torch -> onnx", f"throughput, {concurrency} concurrent"], rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(common.SCENARIOS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--output")
    for scenario in common.SCENARIOS:
        parser.add_argument(f"--{scenario}-model")
    args = parser.parse_args(argv)
    from fmhub.paths import default_model_dir

    work = Path(tempfile.mkdtemp(prefix="fmhub-onnx-bench-"))
    results = {}
    for scenario in args.scenarios.split(","):
        folder = getattr(args, scenario.replace("-", "_") + "_model") or default_model_dir(scenario)
        results[scenario] = measure(scenario, Path(folder), work, args.reps, args.concurrency)
        print(json.dumps({scenario: results[scenario]}, default=str), flush=True)
    print(table(results))
    common.write_json(args.output, {"machine": common.machine(), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
