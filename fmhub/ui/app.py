"""The hub app: one tab per scenario, models loaded lazily, hardened for public hosting.

Model choice per tab, in order of precedence: CLI flags (`--customer-service-model`), environment variables
(`FMHUB_CUSTOMER_SERVICE_MODEL`, ...), a YAML config file (`FMHUB_APP_CONFIG` or `--config`), else the embedded
default.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from fmhub.registry import list_scenarios, scenario_class  # noqa: E402
from fmhub.replies import DEFAULT_REPLY_MODE, add_reply_flags, configured_writer  # noqa: E402
from fmhub.ui.models import BOOTSTRAP, ModelSlot  # noqa: E402

log = logging.getLogger("fmhub.app")

# Hardening limits (see RELIABILITY.md): bounded queue and concurrency, upload, request and image-size caps.
MAX_FILE_SIZE = "10mb"
MAX_IMAGE_PIXELS = 40_000_000  # decompression-bomb guard: larger images are refused before decoding
MAX_REQUEST_BYTES = 1_000_000  # an API call's JSON body (a chat message and its bounded history fit many times over)
MAX_DRAINED_BYTES = 64_000_000  # a refused body is read and dropped up to this much (so the client gets the 413)
REQUEST_TOO_LARGE = "This request is too large. Please send a shorter message, or start a new chat."
QUEUE_MAX_SIZE = 32
CONCURRENCY = 2


@dataclass
class AppConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    models: dict[str, str | None] = field(default_factory=dict)
    scenarios: tuple[str, ...] | None = None  # None: every registered scenario
    bootstrap: bool = True  # fine-tune missing embedded defaults in the background at start-up
    queue_size: int = QUEUE_MAX_SIZE
    concurrency: int = CONCURRENCY
    runtime: str | None = None  # torch | onnx; None: FMHUB_RUNTIME, else torch
    replies: str | None = None  # customer service: template | generate; None: FMHUB_REPLIES, else the default
    reply_model: str | None = None  # the reply model (None: FMHUB_REPLY_MODEL, else the PyPI SmolLM2 GGUF)


def available_tabs() -> dict:
    """scenario name -> (title, tab builder) for every registered scenario, in registry order."""
    tabs = {}
    for name in list_scenarios():
        cls = scenario_class(name)
        module, _, function = cls.tab.partition(":")
        tabs[name] = (cls.title, getattr(importlib.import_module(module), function))
    return tabs


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (as `MALLOC_ARENA_MAX=2` would) before the server's worker threads start.

    glibc gives each thread that allocates its own arena, up to 8 per core, and keeps what it frees there. Gradio
    serves requests from a pool of threads, so under load the server's memory kept growing round after round (load
    test, 8 clients, 60 s rounds: +10 % and then +8 % more); with 2 arenas it levels off after the first round.
    No-op off glibc or when the user set MALLOC_ARENA_MAX. Returns whether the cap was applied.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, int(arenas)))  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def build_app(config: AppConfig | None = None) -> tuple[gr.Blocks, dict[str, ModelSlot]]:
    config = config or AppConfig()
    limit_malloc_arenas()
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    tabs = available_tabs()
    wanted = config.scenarios if config.scenarios is not None else tuple(tabs)
    slots = {s: ModelSlot(s, config.models.get(s), config.runtime) for s in wanted if s in tabs}
    if "customer-service" in slots:  # --replies generate: the reply model loads once, in the background
        slots["customer-service"].reply_writer = configured_writer(config.replies, config.reply_model)
    with gr.Blocks(title="fmhub demo hub", delete_cache=(600, 900)) as demo:
        gr.Markdown(
            "# fmhub demo hub\nFine-tuned foundation models, served from this machine: pick a scenario below. "
            "Models load on first use; on the very first start the embedded defaults are fine-tuned once."
        )
        with gr.Tabs():
            for scenario, slot in slots.items():
                title, build_tab = tabs[scenario]
                with gr.Tab(title, id=scenario):
                    build_tab(slot)
    demo.queue(api_open=False, max_size=config.queue_size, default_concurrency_limit=config.concurrency)
    quiet_idle_queue(demo)
    if config.bootstrap:
        for slot in slots.values():
            if slot.is_default and not slot.cached():
                BOOTSTRAP.request(slot)
    return demo, slots


ANALYTICS_EVENTS_KEPT = 100  # Gradio keeps a record of each queued event for its monitoring page (off here)


def quiet_idle_queue(demo: gr.Blocks, poll_seconds: float = 0.01) -> None:
    """Poll the idle queue every 10 ms instead of Gradio's 1 ms (progress: 50 ms instead of 10 ms), and stop the
    queue's per-event monitoring summary.

    An idle Gradio 6 server otherwise wakes ~1,400 times a second and holds ~10 % of a core; on 2 cores that is CPU
    the models (and a first-run fine-tuning) do not get. Costs at most 10 ms of queueing delay on an idle server.
    After every event Gradio also builds a pandas table of the last 10,000 events' records for the monitoring page
    (which fmhub keeps off): 12 % of the server's busy time for cheap requests, growing with the records kept. Only
    the last ANALYTICS_EVENTS_KEPT records are kept and the summary is never recomputed.
    """
    queue = getattr(demo, "_queue", None)
    if queue is not None and hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = max(queue.sleep_when_free, poll_seconds)
        queue.progress_update_sleep_when_free = max(getattr(queue, "progress_update_sleep_when_free", 0), 0.05)
    if queue is not None and hasattr(queue, "ANAYLTICS_CACHE_FREQUENCY"):  # Gradio's spelling
        queue.ANAYLTICS_CACHE_FREQUENCY = sys.maxsize
        queue.ANALYTICS_MAX_EVENTS = min(getattr(queue, "ANALYTICS_MAX_EVENTS", ANALYTICS_EVENTS_KEPT),
                                         ANALYTICS_EVENTS_KEPT)


class RequestSizeLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 with one short line before anything parses it.

    Without it Gradio parsed any body it got: a 16 MB, 100,000-message chat history took 16 s of a worker and 188 MB.
    The refused body is read and dropped (not kept), so the client gets the answer instead of a reset connection.
    Gradio's multipart routes (`.../upload`, `.../process_recording`) are left to its own `max_file_size` check.
    """

    MULTIPART_ROUTES = ("/upload", "/process_recording")

    def __init__(self, app, max_bytes: int = MAX_REQUEST_BYTES):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH")
                or scope["path"].rstrip("/").endswith(self.MULTIPART_ROUTES)):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if length.isdigit():  # the server holds the body to this length: nothing to count
            if int(length) <= self.max_bytes:
                return await self.app(scope, receive, send)
            return await self._refuse(scope, receive, send, int(length))
        received, size, more = [], 0, True  # no length given (chunked): read up to the limit, then replay it
        while more and size <= self.max_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([*received, message], receive), send)
            received.append(message)
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        if size > self.max_bytes:
            return await self._refuse(scope, receive, send, size, more)
        return await self.app(scope, _replay(received, receive), send)

    async def _refuse(self, scope, receive, send, size: int, more: bool = True) -> None:
        log.warning("refused a request of %s bytes to %s (limit %d)", size, scope["path"][:100], self.max_bytes)
        drained = 0
        while more and drained < MAX_DRAINED_BYTES:
            message = await receive()
            drained += len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)
        body = json.dumps({"detail": REQUEST_TOO_LARGE, "error": REQUEST_TOO_LARGE}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list, receive):
    """An ASGI `receive` that hands out `messages` first, then the real one."""
    pending = list(messages)

    async def replay():
        return pending.pop(0) if pending else await receive()

    return replay


def launch(demo: gr.Blocks, config: AppConfig, **kwargs):
    """Launch hardened: upload and request-size caps, no monitoring page, no run history, no share link, cache folder
    not served."""
    from starlette.middleware import Middleware

    from fmhub.paths import fmhub_home

    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(RequestSizeLimit)]
    return demo.launch(
        app_kwargs=app_kwargs,
        server_name=config.host,
        server_port=config.port,
        max_file_size=MAX_FILE_SIZE,
        enable_monitoring=False,
        run_history=False,
        share=False,
        show_error=False,
        blocked_paths=[str(fmhub_home())],
        **kwargs,
    )


def model_variable(scenario: str) -> str:
    """The environment variable that picks a tab's model: `FMHUB_CUSTOMER_SERVICE_MODEL`, ..."""
    return "FMHUB_" + scenario.upper().replace("-", "_") + "_MODEL"


def config_from_args(args: argparse.Namespace) -> AppConfig:
    import yaml

    file_values = {}
    config_path = getattr(args, "config", None) or os.environ.get("FMHUB_APP_CONFIG")
    if config_path:
        file_values = yaml.safe_load(Path(config_path).read_text()) or {}
    models = dict(file_values.get("models", {}))
    for scenario in list_scenarios():
        env = os.environ.get(model_variable(scenario))
        flag = getattr(args, scenario.replace("-", "_") + "_model", None)
        models[scenario] = flag or env or models.get(scenario)
    host = getattr(args, "host", None) or os.environ.get("FMHUB_HOST") or file_values.get("host") or "127.0.0.1"
    port = getattr(args, "port", None) or os.environ.get("FMHUB_PORT") or file_values.get("port") or 7860
    runtime = getattr(args, "runtime", None) or file_values.get("runtime")
    replies = getattr(args, "replies", None) or file_values.get("replies")
    reply_model = getattr(args, "reply_model", None) or file_values.get("reply_model")
    return AppConfig(host=host, port=int(port), models=models, runtime=runtime, replies=replies,
                     reply_model=reply_model)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="fmhub demo hub")
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 7860)")
    parser.add_argument("--config", help="YAML file: host, port, runtime, models: {scenario: folder or Hub id}")
    parser.add_argument("--runtime", choices=("torch", "onnx"),
                        help="torch (default; FMHUB_RUNTIME) or onnx: each model's ONNX export on ONNX Runtime")
    add_reply_flags(parser, DEFAULT_REPLY_MODE)
    for scenario in list_scenarios():
        parser.add_argument(f"--{scenario}-model", help=f"folder or Hub id for the {scenario} tab")
    return parser.parse_args(argv)


def launch_from_args(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = config_from_args(args)
    demo, _ = build_app(config)
    launch(demo, config)
