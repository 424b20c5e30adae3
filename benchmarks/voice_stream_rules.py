"""How the stream detector's rule trades found commands for false accepts, on a saved voice-command model.

Two streams, each scanned once with the model (a 1 s window every 0.25 s): the 15-minute false-accept stream of noise
and non-command words (`fmhub.keyword_spotting.false_accept_stream`), and a stream of command clips from an
audiofolder (by default 400 of its clean clips, each after 1.25 s of quiet noise). Then every rule is replayed on the
saved window probabilities: `cN` fires when N consecutive windows name the same command at the threshold or above
(`CONFIRM_WINDOWS`; today c2), `mN` when the mean of the last N windows' probabilities does. A command clip counts as
found when a detection of its command falls within 0.5 s of it; `wrong` is the share of clips that fired another one.

    python benchmarks/voice_families.py --with kokoro --families kokoro --keep runs/lofo   # a model and its clips
    python benchmarks/voice_stream_rules.py runs/lofo/without-kokoro runs/lofo/clips-kokoro --output rules.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402

from fmhub.audio import SAMPLE_RATE as RATE  # noqa: E402  (every clip and stream here is 16 kHz mono)

RULES = ("c1", "c2", "c3", "m2", "m3")
THRESHOLDS = (0.5, 0.6, 0.7, 0.79, 0.85, 0.9, 0.95)
GAP_S = 1.25
MATCH_S = 0.5


def command_stream(folder: Path, clips: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Clean command clips of a folder, each after GAP_S of noise at -55 dBFS; (stream, [(start, end, label)])."""
    import soundfile as sf

    from fmhub.data.audio_data import SILENCE, UNKNOWN

    files = sorted(f for f in folder.glob("*/*_clean.wav") if f.parent.name not in (SILENCE, UNKNOWN))
    if not files:
        raise SystemExit(f"{folder}: no command clips (*/*_clean.wav)")
    rng = np.random.default_rng(seed)
    files = [files[i] for i in rng.permutation(len(files))[:clips]]
    gap = int(GAP_S * RATE)
    parts, spans, pos = [], [], 0
    for f in files:
        wave, rate = sf.read(f, dtype="float32")
        if rate != RATE or wave.ndim != 1:
            raise SystemExit(f"{f}: expected 16 kHz mono")
        parts += [(rng.standard_normal(gap) * 10 ** (-55 / 20)).astype(np.float32), wave]
        spans.append(((pos + gap) / RATE, (pos + gap + len(wave)) / RATE, f.parent.name))
        pos += gap + len(wave)
    return np.concatenate([*parts, np.zeros(gap, np.float32)]), spans


def mean_of_last(probs: np.ndarray, n: int) -> np.ndarray:
    """Each window's probabilities averaged with the n - 1 before it."""
    sums = np.cumsum(np.vstack([np.zeros((1, probs.shape[1]), probs.dtype), probs]), axis=0)
    idx = np.arange(1, len(probs) + 1)
    return (sums[idx] - sums[np.maximum(idx - n, 0)]) / np.minimum(idx, n)[:, None]


def detections(rule: str, probs: np.ndarray, times: np.ndarray, names: list[str], threshold: float) -> list[dict]:
    from fmhub.keyword_spotting import find_detections

    kind, n = rule[0], int(rule[1:])
    if kind == "c":
        return find_detections(probs, times, names, threshold, confirm=n)[0]
    return find_detections(mean_of_last(probs, n), times, names, threshold, confirm=1)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved voice-command model folder")
    parser.add_argument("clips", help="an audiofolder of held-out clips (benchmarks/voice_families.py's clips-*)")
    parser.add_argument("--clips-in-stream", type=int, default=400)
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--output", help="JSON file for the results")
    args = parser.parse_args()

    from fmhub.keyword_spotting import false_accept_stream, scan
    from fmhub.registry import get_scenario

    predictor = get_scenario("voice-command").predictor(Path(args.model))
    names = list(predictor.label_names)
    fa = false_accept_stream(900.0)
    fa_probs, fa_starts = scan(predictor.predict_windows, fa)
    stream, spans = command_stream(Path(args.clips), args.clips_in_stream)
    cs_probs, cs_starts = scan(predictor.predict_windows, stream)
    hours = len(fa) / RATE / 3600
    rows = []
    for rule in args.rules.split(","):
        for t in THRESHOLDS:
            fired = detections(rule, fa_probs, fa_starts / RATE, names, t)
            found = detections(rule, cs_probs, cs_starts / RATE, names, t)
            hit = wrong = 0
            for start, end, label in spans:
                near = [d["label"] for d in found if start - MATCH_S <= d["time"] <= end + MATCH_S]
                hit += label in near
                wrong += any(x != label for x in near)
            rows.append({"rule": rule, "threshold": t, "false_accepts_per_hour": round(len(fired) / hours, 1),
                         "commands_found": round(hit / len(spans), 3), "wrong_command": round(wrong / len(spans), 3)})
            print(f"{rule} threshold {t:.2f}: {rows[-1]['false_accepts_per_hour']:6.1f} false accepts/h, "
                  f"{rows[-1]['commands_found']:.3f} of {len(spans)} commands found, "
                  f"{rows[-1]['wrong_command']:.3f} another command", flush=True)
    if args.output:
        write_json(args.output, {"model": args.model, "clips": args.clips, "calibrated_threshold": predictor.threshold,
                                 "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
