"""Semi-supervised fine-tuning (issue #19): test accuracy with few labels, labelled only vs self-training.

Low-label mode (default): for each seed, `fmhub train --labels-per-class N` keeps N labelled training examples per
class of the embedded set (a different subset per seed) and hands the rest of the training split on as unlabelled;
trained once with `--self-training-rounds 0` (labelled only) and once with self-training (fmhub's default rounds, or
--rounds). Validation and test splits are the embedded ones, untouched.

All-labels mode (`--all-labels --pool PATH`): every labelled example, without and with `--unlabeled-data PATH` (a
pool disjoint from the data set): self-training must not cost more than 0.5 points there. `--pool auto` builds one:
text, the 132 customer messages of `benchmarks/data/reply_eval.jsonl` (written apart from the training data) with
their labels dropped; image, 400 synthetic scans from a random stream the embedded splits never use.

    python benchmarks/semi_supervised.py --scenario customer-service --output benchmarks/results/ssl_text.json
    python benchmarks/semi_supervised.py --scenario medical-image --output benchmarks/results/ssl_image.json
    python benchmarks/semi_supervised.py --scenario voice-command --output benchmarks/results/ssl_audio.json
    python benchmarks/semi_supervised.py --scenario medical-image --all-labels --pool auto --output ...json
    python benchmarks/semi_supervised.py --scenario customer-service --quick --seeds 0   # smoke test, tiny model

Runs go through the CLI into --work-dir (default: a temp folder); a run whose all_results.json exists is not redone and
a killed one is resumed, so the script can be restarted. Extra `fmhub train` flags go after `--`. Prints a markdown
table (mean ± sd over seeds, delta in points) and writes the per-seed numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SCENARIOS, bench_env, machine, markdown_table, tiny_backbones, write_json  # noqa: E402

LABELS_PER_CLASS = {"customer-service": 8, "medical-image": 20, "voice-command": 20}  # the low-label setting
QUICK = ["--epochs", "1", "--max-samples-per-class", "30", "--report-to", "none"]


def train_run(out: Path, flags: list[str], log: Path) -> dict:
    """`fmhub train ... --output-dir out` unless it already finished; resumed when a killed run left its folder."""
    results = out / "all_results.json"
    if not results.is_file():
        again = []
        if out.exists():
            again = ["--resume"] if (out / "rounds").is_dir() or list(out.glob("checkpoint-*")) else ["--overwrite"]
        cmd = [sys.executable, "-m", "fmhub", "train", *flags, "--output-dir", str(out), *again]
        started = time.perf_counter()
        with open(log, "w") as fh:
            done = subprocess.run(cmd, cwd=ROOT, env=bench_env(), stdout=fh, stderr=subprocess.STDOUT)
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}); log: {log}")
        print(f"  {out.name}: {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(results.read_text())


def summary(run: dict) -> dict:
    """What the table and the JSON keep of one run's all_results.json."""
    report = run.get("semi_supervised") or {}
    last = (report.get("rounds") or [{}])[-1]
    return {
        "accuracy": run["accuracy"],
        "macro_f1": run.get("macro_f1"),
        "train_seconds": run.get("train_seconds"),
        "pseudo_labels_taken": last.get("taken"),
        "pseudo_label_accuracy": last.get("pseudo_label_accuracy"),
        "rounds": report.get("rounds"),
    }


POOL_IMAGES = 400
POOL_IMAGE_SEED = 101  # the embedded splits are rendered with seed 0: no image in common


def auto_pool(scenario: str, work: Path) -> Path:
    """An unlabelled pool disjoint from the embedded data set (see the module's docstring)."""
    if scenario == "customer-service":
        path = work / "pool-texts.jsonl"
        rows = [json.loads(line) for line in (ROOT / "benchmarks/data/reply_eval.jsonl").read_text().splitlines()
                if line.strip()]
        path.write_text("".join(json.dumps({"text": row["text"]}) + "\n" for row in rows))
        return path
    if scenario == "medical-image":
        from PIL import Image

        from fmhub.data import medical_synth
        from fmhub.data.image_data import EMBEDDED_SIZE

        folder = work / "pool-images"
        if len(list(folder.glob("*.png"))) != POOL_IMAGES:
            folder.mkdir(parents=True, exist_ok=True)
            images, _, _ = medical_synth.generate(POOL_IMAGES, size=EMBEDDED_SIZE, seed=POOL_IMAGE_SEED)
            for i, image in enumerate(images):
                Image.fromarray(image).save(folder / f"scan-{i:04d}.png")
        return folder
    raise SystemExit(f"--pool auto: no disjoint pool is built for {scenario}; pass a PATH")


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def points(values: list[float]) -> str:
    mean, sd = mean_sd([100 * v for v in values])
    return f"{mean:.1f} ± {sd:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=SCENARIOS, required=True)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated (default: 0,1,2)")
    parser.add_argument("--labels-per-class", type=float,
                        help="labelled examples per class (default: text 8, image 20, audio 20)")
    parser.add_argument("--rounds", type=int, help="--self-training-rounds of the semi-supervised runs "
                                                   "(default: fmhub's)")
    parser.add_argument("--all-labels", action="store_true",
                        help="every label, without and with --unlabeled-data --pool (no --labels-per-class)")
    parser.add_argument("--pool", help="unlabelled data disjoint from the data set, for --all-labels; `auto`: "
                                       "built here (text and image)")
    parser.add_argument("--baseline-from-round-0", action="store_true",
                        help="read labelled-only accuracy from each semi-supervised run's round 0 (the same labelled "
                             "examples, seed and recipe) instead of training it again")
    parser.add_argument("--quick", action="store_true", help="smoke test: a tiny random backbone, 1 epoch, 30 rows")
    parser.add_argument("--work-dir", help="folder for the runs and logs (default: a temp folder)")
    parser.add_argument("--output", help="JSON file for the results")
    parser.add_argument("train_args", nargs="*", help="extra `fmhub train` flags, after --")
    args = parser.parse_args()
    if args.all_labels and not args.pool:
        parser.error("--all-labels needs --pool PATH (unlabelled data disjoint from the data set)")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fmhub-ssl-"))
    work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.pool == "auto":
        args.pool = str(auto_pool(args.scenario, work))
    common = ["--scenario", args.scenario, "--report-to", "none"]
    if args.quick:
        common += ["--model", tiny_backbones(work / "backbones")[args.scenario], *QUICK]
    common += args.train_args
    ssl_flags = ["--self-training-rounds", str(args.rounds)] if args.rounds is not None else []
    if args.all_labels:
        label = "all labels"
        base_flags, semi_flags = [], ["--unlabeled-data", str(Path(args.pool).resolve()), *ssl_flags]
    else:
        per_class = args.labels_per_class or LABELS_PER_CLASS[args.scenario]
        label = f"{per_class:g} per class"
        base_flags = ["--labels-per-class", f"{per_class:g}", "--self-training-rounds", "0"]
        semi_flags = ["--labels-per-class", f"{per_class:g}", *ssl_flags]
    runs = []
    for seed in seeds:
        print(f"seed {seed}", flush=True)
        seeded = [*common, "--seed", str(seed)]
        semi = summary(train_run(work / f"semi-seed{seed}", [*seeded, *semi_flags], work / f"semi-seed{seed}.log"))
        if args.baseline_from_round_0 and semi["rounds"]:
            base = {"accuracy": semi["rounds"][0]["teacher_test_accuracy"], "from": "round 0 of the run"}
        else:
            base = summary(train_run(work / f"base-seed{seed}", [*seeded, *base_flags], work / f"base-seed{seed}.log"))
        runs.append({"seed": seed, "labelled_only": base, "semi_supervised": semi,
                     "delta_points": 100 * (semi["accuracy"] - base["accuracy"])})
        print(json.dumps({k: runs[-1][k] for k in ("seed", "delta_points")}), flush=True)
    base_acc = [r["labelled_only"]["accuracy"] for r in runs]
    semi_acc = [r["semi_supervised"]["accuracy"] for r in runs]
    delta, delta_sd = mean_sd([r["delta_points"] for r in runs])
    row = [args.scenario, label, len(seeds), points(base_acc), points(semi_acc), f"{delta:+.1f} ± {delta_sd:.1f}",
           ", ".join(f"{r['delta_points']:+.1f}" for r in runs)]
    print()
    headers = ["scenario", "labels", "seeds", "labelled only (test acc. %)", "semi-supervised (test acc. %)",
               "delta (pt)", "delta per seed"]
    print(markdown_table(headers, [row]))
    write_json(args.output, {
        "scenario": args.scenario, "mode": "all-labels" if args.all_labels else "low-label", "labels": label,
        "pool": args.pool, "seeds": seeds, "train_args": common, "runs": runs,
        "labelled_only_accuracy": mean_sd(base_acc), "semi_supervised_accuracy": mean_sd(semi_acc),
        "delta_points": [delta, delta_sd], "machine": machine(),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
