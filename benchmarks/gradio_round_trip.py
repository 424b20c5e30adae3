"""Where a Gradio round trip for `/classify_intent` spends its time: fmhub's hub app against a bare Gradio app.

One process launches two servers on free ports:

* the hub app (`fmhub.ui.app`, hardened launch, the customer-service tab on its default model, `--runtime`);
* a bare `gr.Blocks` with one `gr.api` endpoint of the same name that returns a fixed prediction dict of the same
  shape at once (no model, no fmhub code): the floor Gradio and its client set for any app.

Each is called two ways: with `gradio_client` (`Client.predict(..., api_name="/classify_intent")`) and with plain HTTP
on one kept-alive connection (`POST /gradio_api/call/classify_intent`, then the event's result stream, the documented
cURL route). Both `gradio_client` systems run a third time with the client's 50 ms message poll shortened to 2 ms
(`short_polling`), to show how much of the client's floor is that wait. The direct Python call (`predictor.predict([text])`) is the baseline. Requests alternate system by system
(and which goes first); p50 over the embedded test messages. fmhub's share of the overhead is what the hub app adds
over the bare app on the same route.

    python benchmarks/gradio_round_trip.py --output benchmarks/results/gradio_round_trip.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402
from serving import latency  # noqa: E402

API = "classify_intent"


def bare_app(example: dict):
    import gradio as gr

    with gr.Blocks() as demo:
        def classify(text: str) -> dict:
            return example

        gr.api(classify, api_name=API)
    demo.queue(api_open=False)
    demo.launch(prevent_thread_lock=True, quiet=True)
    return demo


def http_call(url: str):
    """The documented HTTP route on one kept-alive connection: POST the input, read the event's result stream."""
    import json

    import httpx

    session = httpx.Client(base_url=url, timeout=30)

    def call(text: str):
        event = session.post(f"/gradio_api/call/{API}", json={"data": [text]}).json()["event_id"]
        body = session.get(f"/gradio_api/call/{API}/{event}").text
        if "event: complete" not in body:
            raise RuntimeError(f"no result: {body[:200]}")
        return json.loads(body.split("data:", 1)[1])

    return call


def short_polling(call, poll_s: float = 0.002):
    """`call` with gradio_client's message poll shortened: its job thread sleeps 50 ms whenever no message of the
    job has arrived yet (`gradio_client.utils`); only for this measurement, restored after each call."""
    import time as real_time
    import types

    from gradio_client import utils

    fast = types.SimpleNamespace(**{k: getattr(real_time, k) for k in dir(real_time) if not k.startswith("__")})
    fast.sleep = lambda seconds: real_time.sleep(min(seconds, poll_s))

    def patched(text: str):
        utils.time = fast
        try:
            return call(text)
        finally:
            utils.time = real_time

    return patched


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="customer-service model folder (default: the cached embedded default)")
    parser.add_argument("--runtime", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    from gradio_client import Client

    from fmhub.data.intents import load_embedded_intents
    from fmhub.paths import default_model_dir
    from fmhub.ui.app import AppConfig, build_app, launch

    folder = args.model or str(default_model_dir("customer-service"))
    texts = [row["text"] for row in load_embedded_intents()["test"]][: args.requests]
    config = AppConfig(models={"customer-service": folder}, scenarios=("customer-service",), bootstrap=False,
                       runtime=args.runtime)
    config.port = None
    hub, slots = build_app(config)
    launch(hub, config, prevent_thread_lock=True, quiet=True)
    predictor = slots["customer-service"].get()
    bare = bare_app(predictor.predict([texts[0]])[0])
    try:
        hub_client, bare_client = Client(hub.local_url, verbose=False), Client(bare.local_url, verbose=False)
        systems = {
            "direct call": lambda text: predictor.predict([text])[0],
            "hub app, gradio_client": lambda text: hub_client.predict(text, api_name=f"/{API}"),
            "hub app, HTTP": http_call(hub.local_url),
            "bare Gradio app, gradio_client": lambda text: bare_client.predict(text, api_name=f"/{API}"),
            "bare Gradio app, HTTP": http_call(bare.local_url),
        }
        systems["hub app, gradio_client, 2 ms poll"] = short_polling(systems["hub app, gradio_client"])
        systems["bare Gradio app, gradio_client, 2 ms poll"] = short_polling(systems["bare Gradio app, gradio_client"])
        started = time.perf_counter()
        timing = latency(systems, texts, warmup=3)
        seconds = time.perf_counter() - started
    finally:
        hub.close()
        bare.close()
    direct = timing["direct call"]["p50_ms"]
    rows, out = [], {}
    for name, t in timing.items():
        overhead = None if name == "direct call" else t["p50_ms"] - (0 if name.startswith("bare") else direct)
        out[name] = {**t, "overhead_p50_ms": overhead}
        rows.append([name, common.fmt(t["p50_ms"]), common.fmt(t["p95_ms"]),
                     "-" if overhead is None else common.fmt(overhead)])
    share = {route: timing[f"hub app, {route}"]["p50_ms"] - direct - timing[f"bare Gradio app, {route}"]["p50_ms"]
             for route in ("gradio_client", "HTTP", "gradio_client, 2 ms poll")}
    print(common.markdown_table(["system", "p50 ms", "p95 ms", "overhead over the direct call, p50 ms"], rows))
    print("fmhub's share of the overhead (hub app - direct call - bare app), p50 ms: "
          + ", ".join(f"{route} {v:.1f}" for route, v in share.items()))
    common.write_json(args.output, {"machine": common.machine(), "runtime": args.runtime, "model": folder,
                                    "requests": len(texts), "seconds": round(seconds, 1), "systems": out,
                                    "fmhub_share_p50_ms": share})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
