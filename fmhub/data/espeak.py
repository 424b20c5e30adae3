"""Small ctypes wrapper around the espeak-ng C library shipped by ``espeakng-loader``.

Only pip packages are needed: ``espeakng-loader`` provides ``libespeak-ng.so`` and
the ``espeak-ng-data`` folder; we talk to the library through its C API
(``espeak_Initialize`` in synchronous mode, a synth callback that collects the
int16 samples, ``espeak_SetVoiceByName``, ``espeak_SetParameter``,
``espeak_Synth``, ``espeak_Synchronize``).

Determinism
-----------
espeak-ng keeps a lot of hidden global state between utterances (wave-generator
phase, pitch-flutter table index, echo buffer, klatt noise state, ...).  Calling
it twice in the same process with identical arguments therefore gives slightly
different audio (different lengths, different samples), even after
``espeak_ng_SetRandSeed`` or ``espeak_Terminate``/``espeak_Initialize``.  The
output is only a function of the *whole call history* of the process.

To make :meth:`Espeak.synthesize` a pure function of its arguments, synthesis
runs in a tiny helper process (stdlib only) that initialises espeak-ng once,
performs a fixed warm-up utterance, and then ``fork()``\\ s a fresh child for
every request: each child starts from the same pristine library state, so the
same request always yields byte-identical samples, independent of call order,
of other requests, or of the number of helper processes used in parallel.
The library is not thread-safe; every helper process serves one request at a
time, guarded by a lock.  Forking costs about 1 ms per request.

On platforms without ``os.fork`` the helper synthesises in-process (same API,
but the output then depends on the request history of that helper).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = [
    "Espeak",
    "EspeakError",
    "get_espeak",
    "list_english_accents",
    "list_variants",
    "list_english_voices",
]

#: Accents whose files exist in espeak-ng-data but that are not usable for plain
#: Latin-script English text ("en-shaw" expects the Shavian alphabet and simply
#: falls back to the "en" rules, i.e. it is a duplicate of "en").
_EXCLUDED_ACCENTS = {"en-shaw"}

_MAGIC = 0x45535047  # "ESPG"
_HDR = struct.Struct("<ii")  # (status or magic, length / sample-rate)


class EspeakError(RuntimeError):
    """espeak-ng could not be loaded, initialised, or failed to synthesise."""


# ---------------------------------------------------------------------------
# Locating the library and its data
# ---------------------------------------------------------------------------


def _locate() -> tuple[str, str]:
    """Return (library path, espeak-ng-data path).

    ``FMHUB_ESPEAK_LIB`` / ``FMHUB_ESPEAK_DATA`` override the espeakng-loader
    defaults.
    """
    lib = os.environ.get("FMHUB_ESPEAK_LIB")
    data = os.environ.get("FMHUB_ESPEAK_DATA")
    if lib is None or data is None:
        try:
            import espeakng_loader  # type: ignore
        except ImportError as exc:  # pragma: no cover - depends on environment
            raise EspeakError(
                "espeak-ng is not available: the PyPI package 'espeakng-loader' is not "
                "installed (pip install espeakng-loader), and FMHUB_ESPEAK_LIB / "
                "FMHUB_ESPEAK_DATA are not set."
            ) from exc
        try:
            lib = lib or espeakng_loader.get_library_path()
            data = data or espeakng_loader.get_data_path()
        except Exception as exc:  # pragma: no cover
            raise EspeakError(f"espeakng-loader could not locate espeak-ng: {exc}") from exc
    if not Path(lib).is_file():
        raise EspeakError(f"espeak-ng shared library not found at {lib!r}")
    if not (Path(data) / "phontab").is_file():
        raise EspeakError(f"espeak-ng data folder looks invalid (no 'phontab'): {data!r}")
    # Load once in this process too, so that a broken library gives a clear error
    # here rather than an obscure failure of the helper process.
    import ctypes

    try:
        ctypes.CDLL(lib)
    except OSError as exc:
        raise EspeakError(f"cannot load espeak-ng shared library {lib!r}: {exc}") from exc
    return str(lib), str(data)


def _data_path() -> Path:
    return Path(_locate()[1])


def list_english_accents(data_path: str | os.PathLike | None = None) -> list[str]:
    """English accent (language voice) names present in the installed data.

    Names are the voice file names, lower-cased, which is what
    ``espeak_SetVoiceByName`` accepts (e.g. ``"en-gb-x-rp"``; note that the
    language code ``"en-gb"`` is *not* accepted, the file is called ``"en"``).
    """
    root = Path(data_path) if data_path is not None else _data_path()
    accents = set()
    for f in (root / "lang").rglob("*"):
        if not f.is_file():
            continue
        name = f.name.lower()
        if name == "en" or name.startswith("en-"):
            if name not in _EXCLUDED_ACCENTS:
                accents.add(name)
    return sorted(accents)


def list_variants(data_path: str | os.PathLike | None = None) -> list[str]:
    """Voice-variant names (files in ``espeak-ng-data/voices/!v``), sorted."""
    root = Path(data_path) if data_path is not None else _data_path()
    vdir = root / "voices" / "!v"
    if not vdir.is_dir():
        return []
    return sorted(p.name for p in vdir.iterdir() if p.is_file())


def list_english_voices(
    variants: Iterable[str] | None = None,
    *,
    include_base: bool = True,
    data_path: str | os.PathLike | None = None,
) -> list[str]:
    """All ``accent`` and ``accent+variant`` names usable with SetVoiceByName."""
    root = Path(data_path) if data_path is not None else _data_path()
    accents = list_english_accents(root)
    available = list_variants(root)
    if variants is None:
        variants = available
    else:
        variants = list(variants)
        missing = sorted(set(variants) - set(available))
        if missing:
            raise ValueError(f"unknown espeak-ng voice variants: {missing}")
    out = []
    for a in accents:
        if include_base:
            out.append(a)
        out.extend(f"{a}+{v}" for v in variants)
    return out


# ---------------------------------------------------------------------------
# Helper process (stdlib only; run with ``python -I -S -c <source> lib data``)
# ---------------------------------------------------------------------------

_SERVER_SOURCE = r"""
import ctypes, json, os, struct, sys

HDR = struct.Struct("<ii")
MAGIC = 0x45535047

def main():
    lib_path, data_path = sys.argv[1], sys.argv[2]
    fin = sys.stdin.buffer
    fout = sys.stdout.buffer

    def reply(status, payload=b""):
        fout.write(HDR.pack(status, len(payload)))
        fout.write(payload)
        fout.flush()

    try:
        lib = ctypes.CDLL(lib_path)
    except OSError as exc:
        msg = str(exc).encode("utf-8", "replace")
        fout.write(HDR.pack(-1, len(msg))); fout.write(msg); fout.flush()
        return
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    has_seed = hasattr(lib, "espeak_ng_SetRandSeed")
    if has_seed:
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    rate = lib.espeak_Initialize(2, 0, data_path.encode(), 0)   # AUDIO_OUTPUT_SYNCHRONOUS
    if rate <= 0:
        msg = ("espeak_Initialize failed (returned %d) with data %r" % (rate, data_path)).encode()
        fout.write(HDR.pack(-1, len(msg))); fout.write(msg); fout.flush()
        return

    CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    buf = bytearray()

    def _cb(wav, n, events):
        if wav and n > 0:
            buf.extend(ctypes.string_at(wav, 2 * n))
        return 0

    cb = CB(_cb)
    lib.espeak_SetSynthCallback(cb)

    def synth(req):
        r = lib.espeak_SetVoiceByName(req["voice"].encode("utf-8"))
        if r != 0:
            return 1000 + r, ("espeak_SetVoiceByName(%r) failed with code %d" % (req["voice"], r)).encode()
        lib.espeak_SetParameter(1, int(req["rate"]), 0)    # espeakRATE
        lib.espeak_SetParameter(3, int(req["pitch"]), 0)   # espeakPITCH
        lib.espeak_SetParameter(4, int(req["range"]), 0)   # espeakRANGE
        lib.espeak_SetParameter(2, int(req["volume"]), 0)  # espeakVOLUME
        if has_seed:
            lib.espeak_ng_SetRandSeed(int(req["seed"]))
        del buf[:]
        text = req["text"].encode("utf-8") + b"\0"
        r = lib.espeak_Synth(text, len(text), 0, 1, 0, 1, None, None)  # POS_CHARACTER, espeakCHARS_UTF8
        if r != 0:
            return 2000 + r, ("espeak_Synth failed with code %d" % r).encode()
        lib.espeak_Synchronize()
        return 0, bytes(buf)

    # Fixed warm-up: the pristine state every request starts from is the state after
    # this utterance (it also pre-loads lazily initialised tables => faster children).
    synth({"text": "warm up", "voice": "en", "rate": 175, "pitch": 50, "range": 50,
           "volume": 100, "seed": 0})
    fout.write(HDR.pack(MAGIC, rate)); fout.flush()

    use_fork = hasattr(os, "fork")
    while True:
        head = fin.read(4)
        if len(head) < 4:
            return
        (n,) = struct.unpack("<i", head)
        req = json.loads(fin.read(n).decode("utf-8"))
        if not use_fork:
            status, payload = synth(req)
            reply(status, payload)
            continue
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: fresh copy of the warmed-up library state
            os.close(rfd)
            try:
                status, payload = synth(req)
            except BaseException as exc:
                status, payload = 3000, repr(exc).encode()
            data = HDR.pack(status, len(payload)) + payload
            view = memoryview(data)
            while view:
                k = os.write(wfd, view)
                view = view[k:]
            os._exit(0)
        os.close(wfd)
        chunks = []
        while True:
            c = os.read(rfd, 1 << 20)
            if not c:
                break
            chunks.append(c)
        os.close(rfd)
        _, wstatus = os.waitpid(pid, 0)
        data = b"".join(chunks)
        if len(data) < HDR.size:
            reply(4000, ("synthesis child died (wait status %d)" % wstatus).encode())
            continue
        status, length = HDR.unpack_from(data)
        reply(status, data[HDR.size:HDR.size + length])

main()
"""


class _Server:
    """One helper process; serves one request at a time."""

    def __init__(self, lib_path: str, data_path: str):
        self.lock = threading.Lock()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _SERVER_SOURCE, lib_path, data_path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise EspeakError(f"cannot start the espeak-ng helper process: {exc}") from exc
        head = self._read_exact(_HDR.size)
        if head is None:
            err = self._stderr_text()
            raise EspeakError(f"espeak-ng helper process failed to start: {err}")
        magic, value = _HDR.unpack(head)
        if magic != _MAGIC:
            msg = self._read_exact(value) or b""
            self.close()
            raise EspeakError(f"cannot initialise espeak-ng: {msg.decode('utf-8', 'replace')}")
        self.sample_rate = int(value)
        # Drain stderr in the background so the helper never blocks on a full pipe.
        self._stderr_lines: list[bytes] = []
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr_lines.append(line)
            del self._stderr_lines[:-50]

    def _stderr_text(self) -> str:
        try:
            self.proc.wait(timeout=5)
            return (self.proc.stderr.read() or b"").decode("utf-8", "replace").strip()[-2000:]
        except Exception:
            return "(no stderr)"

    def _read_exact(self, n: int) -> bytes | None:
        assert self.proc.stdout is not None
        out = bytearray()
        while len(out) < n:
            chunk = self.proc.stdout.read(n - len(out))
            if not chunk:
                return None
            out.extend(chunk)
        return bytes(out)

    def request(self, req: dict) -> bytes:
        body = json.dumps(req, sort_keys=True).encode("utf-8")
        with self.lock:
            if self.proc.poll() is not None:
                raise EspeakError("espeak-ng helper process has exited")
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(struct.pack("<i", len(body)) + body)
                self.proc.stdin.flush()
            except BrokenPipeError as exc:
                raise EspeakError("espeak-ng helper process has exited") from exc
            head = self._read_exact(_HDR.size)
            if head is None:
                raise EspeakError(
                    "espeak-ng helper process died: " + b"".join(self._stderr_lines).decode("utf-8", "replace")[-2000:]
                )
            status, length = _HDR.unpack(head)
            payload = self._read_exact(length) if length else b""
            if payload is None:
                raise EspeakError("espeak-ng helper process died mid-reply")
        if status != 0:
            raise EspeakError(
                f"espeak-ng failed for {req['text']!r} / voice {req['voice']!r}: {payload.decode('utf-8', 'replace')}"
            )
        return payload

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
            self.proc.wait()


class Espeak:
    """Lazy, thread-safe singleton front-end to espeak-ng.

    ``Espeak()`` always returns the same object; nothing is loaded until the
    first synthesis.  All methods may be called from several threads.
    """

    _instance: Espeak | None = None
    _instance_lock = threading.Lock()

    def __new__(cls) -> Espeak:
        with cls._instance_lock:
            if cls._instance is None:
                inst = super().__new__(cls)
                inst._lock = threading.Lock()
                inst._servers = []
                inst._idle = queue.Queue()
                inst._paths = None
                inst._native_rate = None
                inst._variants = None
                inst._accents = None
                inst._pid = os.getpid()
                cls._instance = inst
                atexit.register(inst.close)
            return cls._instance

    # -- setup -------------------------------------------------------------
    def _ensure(self, n_servers: int = 1) -> None:
        if self._pid != os.getpid():
            # We are in a fork()ed child (e.g. a DataLoader worker): the helper
            # pipes belong to the parent; start our own helpers.
            self._lock = threading.Lock()
            self._servers = []
            self._idle = queue.Queue()
            self._pid = os.getpid()
        with self._lock:
            if self._paths is None:
                self._paths = _locate()
                self._variants = set(list_variants(self._paths[1]))
                self._accents = set(list_english_accents(self._paths[1]))
            while len(self._servers) < n_servers:
                srv = _Server(*self._paths)
                self._native_rate = srv.sample_rate
                self._servers.append(srv)
                self._idle.put(srv)

    @property
    def data_path(self) -> str:
        self._ensure(0)
        return self._paths[1]

    @property
    def native_sample_rate(self) -> int:
        """espeak-ng's output rate (22050 Hz for the bundled data)."""
        self._ensure(1)
        return int(self._native_rate)

    def list_english_voices(self, variants: Iterable[str] | None = None, include_base: bool = True) -> list[str]:
        """``accent`` and ``accent+variant`` names, e.g. ``"en-us+f3"``."""
        return list_english_voices(variants, include_base=include_base, data_path=self.data_path)

    def list_english_accents(self) -> list[str]:
        return list_english_accents(self.data_path)

    def list_variants(self) -> list[str]:
        return list_variants(self.data_path)

    def close(self) -> None:
        """Stop the helper processes (they are restarted lazily if needed)."""
        if self._pid != os.getpid():
            return
        with self._lock:
            servers, self._servers = self._servers, []
            self._idle = queue.Queue()
        for s in servers:
            s.close()

    # -- synthesis ---------------------------------------------------------
    def _validate_voice(self, voice: str) -> None:
        self._ensure(0)
        if "+" in voice:
            _, variant = voice.split("+", 1)
            # espeak silently ignores unknown variants; catch that here.
            if variant not in self._variants:
                raise ValueError(f"unknown espeak-ng voice variant {variant!r} in {voice!r}")

    def synthesize(self, text: str, voice: str, rate: int = 175, pitch: int = 50, sample_rate: int = 16000, *,
                   pitch_range: int = 50, volume: int = 100, seed: int = 0) -> np.ndarray:
        """Synthesise ``text``; float32 mono in [-1, 1] at ``sample_rate``.

        ``voice``: an accent such as ``"en-us"`` optionally followed by
        ``"+variant"`` (``"en-us+f3"``).  ``rate`` in words per minute
        (80..750), ``pitch`` and ``pitch_range`` 0..99.  The result is a
        deterministic function of the arguments.
        """
        self._validate_voice(voice)
        req = {"text": str(text), "voice": str(voice), "rate": int(np.clip(rate, 80, 750)),
               "pitch": int(np.clip(pitch, 0, 99)), "range": int(np.clip(pitch_range, 0, 99)),
               "volume": int(np.clip(volume, 0, 200)), "seed": int(seed)}
        self._ensure(1)
        srv = self._idle.get()
        try:
            payload = srv.request(req)
        finally:
            self._idle.put(srv)
        raw = np.frombuffer(payload, dtype="<i2").astype(np.int16, copy=True)  # at native_sample_rate, untrimmed
        return _to_float(raw, self.native_sample_rate, sample_rate)


def _to_float(raw: np.ndarray, native_rate: int, sample_rate: int) -> np.ndarray:
    x = raw.astype(np.float32) / 32768.0
    if sample_rate != native_rate and x.size:
        import soxr

        x = soxr.resample(x, native_rate, sample_rate, quality="HQ").astype(np.float32)
    return np.clip(x, -1.0, 1.0)


def get_espeak() -> Espeak:
    """The process-wide :class:`Espeak` singleton."""
    return Espeak()
