"""Leave one voice family out: does the voice-command default understand a synthesizer it never heard?

For each installed family (espeak-ng, piper, mbrola, pico; `fmhub.data.voice_corpus`), the default recipe is trained
through the CLI without that family (`fmhub train --scenario voice-command --voice-families=-FAMILY`) and scored
through `fmhub evaluate` on an audiofolder of that family's clips: its ten commands and other words (espeak-ng: the
36 test voices; other families: every rendition), each clean and once more with noise at 5-15 dB SNR.

    python benchmarks/voice_families.py --output benchmarks/results/voice_families.json   # ~5 min per family
    python benchmarks/voice_families.py --families piper --keep runs/lofo                # one family, keep models
    python benchmarks/voice_families.py --with kokoro    # the opt-in Kokoro family in every training set, and held out

Prints a markdown table: command accuracy, detector recall at the calibrated threshold, non-command accept rate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, bench_env, write_json  # noqa: E402

NOISE_SNR_DB = (5.0, 15.0)


def family_folder(family: str, target: Path) -> dict:
    """The family's held-out clips as an audiofolder (clean + noisy copies); returns clip counts."""
    import soundfile as sf

    from fmhub.data import audio_augment as aug
    from fmhub.data import voice_corpus
    from fmhub.data.audio_data import corpus_dir

    part = voice_corpus.load_family(family, corpus_dir())
    splits = ["test"] if family == voice_corpus.ESPEAK else ["train", "validation", "test"]
    rng = np.random.default_rng(0)
    counts = {"command": 0, "other": 0}
    for split in splits:
        waves, labels, _ = part[split]
        for i, (wave, label) in enumerate(zip(waves, labels, strict=True)):
            if label == voice_corpus.SILENCE:
                continue
            clean = wave.astype(np.float32) / 32768.0
            noise = aug.random_noise(len(clean), rng)
            noisy = np.clip(aug.add_noise(clean, noise, rng.uniform(*NOISE_SNR_DB)), -1, 1)
            folder = target / label
            folder.mkdir(parents=True, exist_ok=True)
            for tag, clip in (("clean", clean), ("noisy", noisy)):
                sf.write(folder / f"{split}_{i:05d}_{tag}.wav", clip, 16000, subtype="PCM_16")
                counts["other" if label == voice_corpus.UNKNOWN else "command"] += 1
    return counts


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run(cmd, cwd=ROOT, env=bench_env(), stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}); log: {log}")
    return time.perf_counter() - t0


def main() -> int:
    from fmhub.data import voice_corpus

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", help="comma-separated (default: every installed family)")
    parser.add_argument("--with", dest="extra", default="",
                        help="opt-in families added to every training set, e.g. kokoro (the row holding one out "
                             "trains without it)")
    parser.add_argument("--keep", help="folder to keep the trained models and logs in (default: a temp folder)")
    parser.add_argument("--output", help="JSON file for the results")
    parser.add_argument("train_args", nargs="*", help="extra `fmhub train` flags, after --")
    args = parser.parse_args()
    installed = voice_corpus.installed_families()
    extra = [f for f in args.extra.split(",") if f]
    families = args.families.split(",") if args.families else installed + extra
    work = Path(args.keep or tempfile.mkdtemp(prefix="fmhub-lofo-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for family in families:
        out, data = work / f"without-{family}", work / f"clips-{family}"
        counts = family_folder(family, data)
        train_s = run([sys.executable, "-m", "fmhub", "train", "--scenario", "voice-command",
                       "--voice-families=" + ",".join([f"-{family}"] + [f"+{f}" for f in extra if f != family]),
                       "--output-dir", str(out), *args.train_args],
                      work / f"train-{family}.log")
        eval_dir = work / f"eval-{family}"
        run([sys.executable, "-m", "fmhub", "evaluate", "--scenario", "voice-command", "--model", str(out),
             "--data", str(data), "--output-dir", str(eval_dir)], work / f"eval-{family}.log")
        scores = json.loads((eval_dir / "all_results.json").read_text())
        trained = yaml.safe_load((out / "train_config.yaml").read_text()).get("voice_families")
        rows.append({
            "held_out_family": family, "trained_on": trained or ",".join(f for f in installed + extra if f != family),
            "command_clips": counts["command"], "other_word_clips": counts["other"],
            "command_accuracy": scores.get("command_accuracy"),
            "detector_recall": scores.get("command_recall_at_threshold"),
            "non_command_accepts": scores.get("non_command_accept_rate"),
            "threshold": scores.get("detection_threshold"), "train_seconds": round(train_s, 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    print("\n| held-out family | trained on | command clips | command accuracy | detector recall | "
          "non-command accepts | threshold |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['held_out_family']} | {r['trained_on']} | {r['command_clips']} | {r['command_accuracy']:.3f} | "
              f"{r['detector_recall']:.3f} | {r['non_command_accepts']:.3f} | {r['threshold']:.2f} |")
    if args.output:
        write_json(args.output, {"rows": rows, "noise_snr_db": NOISE_SNR_DB})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
