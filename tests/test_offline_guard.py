"""RELIABILITY item 17: with HF_HUB_OFFLINE=1 and no network the app starts from local folders and connects nowhere.

The proof runs in a fresh interpreter whose first lines put a guard on the socket layer, before anything else is
imported (so it covers gradio's, huggingface_hub's and transformers' import-time code as well): `socket.socket.connect`
/ `connect_ex` / `sendto`, `socket.create_connection`, `socket.getaddrinfo` and `gethostbyname` record and refuse every
destination that is not 127.0.0.1, ::1 or localhost, with the stack that asked for it. The child then builds the hub
app the way `python app.py --<scenario>-model FOLDER ...` does, launches it on 127.0.0.1, makes one request per tab
with gradio_client, lets background threads run, and reports what the guard saw. A control at the end checks that
the guard does catch the sync (`create_connection`), async (asyncio) and DNS paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULT_MARK = "@@OFFLINE_GUARD@@"
_CLIENT_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "GRADIO_", "FMHUB_")
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

GUARD = r'''
import ipaddress, socket, sys, traceback

assert not {"gradio", "huggingface_hub", "fmhub", "httpx"} & set(sys.modules), "the guard must come first"
OUTBOUND = []
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_GUARD_FUNCTIONS = {"_where", "_refuse", "_check", "_connect", "_connect_ex", "_sendto", "_create_connection",
                    "_getaddrinfo", "_gethostbyname"}


def _is_local(host):
    if host is None or host == "" or host == b"":
        return True  # a passive/wildcard lookup, no destination
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").split("%")[0].rstrip(".").lower()
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def _where():
    frames = [f for f in traceback.extract_stack() if f.name not in _GUARD_FUNCTIONS]
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in frames[-14:]]


def _refuse(kind, address):
    OUTBOUND.append({"kind": kind, "address": repr(address), "stack": _where()})
    raise ConnectionRefusedError(f"offline guard: outbound {kind} to {address!r} refused")


def _check(kind, sock_family, address):
    if sock_family == getattr(socket, "AF_UNIX", None) or not isinstance(address, tuple):
        return
    if not _is_local(address[0]):
        _refuse(kind, address)


_orig_connect, _orig_connect_ex = socket.socket.connect, socket.socket.connect_ex
_orig_sendto, _orig_create = socket.socket.sendto, socket.create_connection
_orig_getaddrinfo, _orig_gethostbyname = socket.getaddrinfo, socket.gethostbyname


def _connect(self, address):
    _check("connect", self.family, address)
    return _orig_connect(self, address)


def _connect_ex(self, address):
    try:
        _check("connect_ex", self.family, address)
    except ConnectionRefusedError:
        import errno
        return errno.ECONNREFUSED
    return _orig_connect_ex(self, address)


def _sendto(self, data, *args):
    _check("sendto", self.family, args[-1])
    return _orig_sendto(self, data, *args)


def _create_connection(address, *args, **kwargs):
    _check("create_connection", None, tuple(address))
    return _orig_create(address, *args, **kwargs)


def _getaddrinfo(host, *args, **kwargs):
    if not _is_local(host):
        OUTBOUND.append({"kind": "getaddrinfo", "address": repr(host), "stack": _where()})
        raise socket.gaierror(socket.EAI_NONAME, f"offline guard: lookup of {host!r} refused")
    return _orig_getaddrinfo(host, *args, **kwargs)


def _gethostbyname(host):
    if not _is_local(host):
        OUTBOUND.append({"kind": "gethostbyname", "address": repr(host), "stack": _where()})
        raise socket.gaierror(socket.EAI_NONAME, f"offline guard: lookup of {host!r} refused")
    return _orig_gethostbyname(host)


socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto = _connect, _connect_ex, _sendto
socket.create_connection, socket.getaddrinfo, socket.gethostbyname = _create_connection, _getaddrinfo, _gethostbyname
'''

APP = r'''
import json, time
import numpy as np
from PIL import Image

result = {}
models = json.loads(MODELS)
flags = [arg for scenario, folder in models.items() for arg in (f"--{scenario}-model", folder)]
from fmhub.ui.app import build_app, config_from_args, launch, parse_args

config = config_from_args(parse_args(flags))  # what `python app.py --customer-service-model FOLDER ...` does
config.port = None  # a free port
demo, slots = build_app(config)
launch(demo, config, prevent_thread_lock=True)
result["url"] = demo.local_url
result["tabs"] = sorted(slots)
result["offline"] = __import__("huggingface_hub").constants.HF_HUB_OFFLINE

from gradio_client import Client, handle_file

Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save("probe.png")
from fmhub.audio import write_wav

write_wav("probe.wav", 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000))
client = Client(demo.local_url, verbose=False)
answers = {}
history, *_ = client.predict("where is my package", [], api_name="/chat")
answers["customer-service"] = history[-1]["role"]
answers["medical-image"] = type(client.predict(handle_file("probe.png"), api_name="/classify_image")).__name__
answers["voice-command"] = type(client.predict(handle_file("probe.wav"), api_name="/classify_audio")).__name__
result["answers"] = answers
time.sleep(2)  # background threads (telemetry, version checks) would have fired by now
demo.close()
result["app_outbound"] = list(OUTBOUND)

# control: the guard sees the sync, async and DNS paths (and lets nothing through)
import asyncio
import httpx

for attempt in (lambda: socket.create_connection(("203.0.113.7", 443), timeout=1),
                lambda: httpx.get("https://huggingface.co/api/whoami-v2", timeout=1),
                lambda: asyncio.run(asyncio.open_connection("203.0.113.8", 443)),
                lambda: socket.getaddrinfo("huggingface.co", 443)):
    try:
        attempt()
        result.setdefault("control_leaks", []).append("connected")
    except Exception:
        pass
result["control"] = [entry["kind"] + " " + entry["address"] for entry in OUTBOUND[len(result["app_outbound"]):]]
'''


def guarded_app_run(models: dict[str, str], tmp_path: Path, **env_overrides: str | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_CLIENT_ENV_PREFIXES) and k not in _PROXY_VARS and k != "PYTHONPATH"}
    for name in ("hf_home", "fmhub_home", "work"):
        (tmp_path / name).mkdir(exist_ok=True)
    env.update(HF_HOME=str(tmp_path / "hf_home"), FMHUB_HOME=str(tmp_path / "fmhub_home"), HF_HUB_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               PYTHONPATH=str(ROOT), TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    for key, value in env_overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    script = (GUARD + f"\nMODELS = {json.dumps(models)!r}\n" + textwrap.dedent(APP)
              + f"\nprint({RESULT_MARK!r} + json.dumps(result))\n")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path / "work", capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_MARK)][-1]
    return json.loads(line[len(RESULT_MARK):])


def describe(outbound: list[dict]) -> str:
    return "\n".join(f"{e['kind']} {e['address']}\n    " + "\n    ".join(e["stack"]) for e in outbound)


@pytest.fixture(scope="module")
def local_models(tiny_intent_model, tiny_image_model, tiny_audio_model) -> dict[str, str]:
    return {"customer-service": str(tiny_intent_model), "medical-image": str(tiny_image_model),
            "voice-command": str(tiny_audio_model)}


@pytest.mark.parametrize("analytics", ["False", None], ids=["analytics-off", "analytics-unset"])
def test_app_offline_makes_no_outbound_connection(analytics, local_models, tmp_path):
    """analytics-unset: GRADIO_ANALYTICS_ENABLED not set by the caller; fmhub.ui.app defaults it to False itself."""
    res = guarded_app_run(local_models, tmp_path, GRADIO_ANALYTICS_ENABLED=analytics)
    assert res["offline"] is True and res["url"].startswith("http://127.0.0.1:")
    assert res["tabs"] == sorted(local_models)
    assert res["answers"] == {"customer-service": "assistant", "medical-image": "tuple", "voice-command": "tuple"}
    assert res["app_outbound"] == [], describe(res["app_outbound"])
    # the guard was live: each control attempt was recorded and refused, none got through
    assert "control_leaks" not in res
    kinds = [c.split()[0] for c in res["control"]]
    assert "create_connection" in kinds and "getaddrinfo" in kinds and "connect" in kinds, res["control"]


def test_the_guard_catches_gradios_version_check_when_analytics_are_on(local_models, tmp_path):
    """What GRADIO_ANALYTICS_ENABLED=False (set by fmhub.ui.app unless the user chose) stops: gradio's Blocks starts
    `gradio.analytics.version_check`, a GET of https://api.gradio.app/pkg-version. gradio's and gradio_client's
    telemetry go through huggingface_hub's `send_telemetry`, which HF_HUB_OFFLINE=1 already silences."""
    res = guarded_app_run(local_models, tmp_path, GRADIO_ANALYTICS_ENABLED="True")
    assert res["answers"]["customer-service"] == "assistant"  # refused connections do not break the app
    assert res["app_outbound"], "the guard saw nothing: it is not covering the app's threads"
    assert {e["address"] for e in res["app_outbound"]} == {"('api.gradio.app', 443)"}, describe(res["app_outbound"])
    assert any("gradio/analytics.py" in frame and "version_check" in frame
               for e in res["app_outbound"] for frame in e["stack"]), describe(res["app_outbound"])
