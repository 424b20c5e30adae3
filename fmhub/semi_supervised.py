"""Semi-supervised fine-tuning by self-training: `fmhub train --unlabeled-data PATH` / `--labels-per-class N`.

Round 0 trains on the labelled examples with the scenario's usual recipe. Each later round r (1..R) labels the pool
with the model of round r-1 (its calibrated probabilities) and retrains from the pretrained backbone on the labelled
examples plus the pseudo-labels taken, class-balanced: every class takes in turn its next most likely example (by its
own probability) that no class took before, up to ceil(r / R * pool / classes / 2) each, so the share of the pool
taken grows round by round and every class gets the same number. Retraining from the backbone, not from the teacher, keeps
a round's errors from compounding. The cut-off is --pseudo-label-threshold, raised to the model's own out-of-scope
threshold where the scenario calibrates one (customer service): an input the served model would turn away is never
pseudo-labelled.

Validation and test splits are never touched: validation keeps picking the best epoch and calibrating, test scores.

Layout in --output-dir: `rounds/round-<r>/` (each round's model, a complete fmhub run while it trains: checkpoints,
lock, resume), `rounds/pseudo-labels-<r>.json` (the pseudo-labels round r trains on) and the final round's model in
the folder itself. A killed run continues with --resume at the round it was in: finished rounds are kept, the
interrupted one resumes from its own latest checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fmhub import checkpoints
from fmhub.config import TrainConfig
from fmhub.data.unlabeled import UNKNOWN, Pool, replace_labels, split_off_pool
from fmhub.errors import FmhubError
from fmhub.model_folder import ModelFolder, OutputFolder
from fmhub.registry import get_scenario

METHOD = "self-training (class-balanced: the same number of pseudo-labels per class, each class its most likely " \
         "examples by its own probability; each round retrained from the backbone)"
ROUNDS_DIR = "rounds"
# settings a resumed run may change without changing what the finished rounds learned
RESUMABLE = ("output_dir", "resume", "resume_from", "overwrite", "report_to", "num_workers", "eval_batch_size",
             "checkpoint_every_steps", "save_total_limit", "export", "push_to_hub", "hub_repo_id", "hub_private")


@dataclass
class PseudoLabels:
    indices: np.ndarray  # rows of the pool
    labels: np.ndarray  # the predicted class of each
    record: dict  # what all_results.json reports about the round


# -- choosing pseudo-labels -------------------------------------------------------------------------------------------
def round_cap(pool_size: int, num_classes: int, round_number: int, rounds: int) -> int:
    """Pseudo-labels one class takes in `round_number` (1..rounds): a growing share, up to half of a balanced pool's
    even share (the pool also holds examples of no class, such as out-of-scope messages)."""
    return math.ceil(round_number / rounds * pool_size / num_classes / 2)


def select_pseudo_labels(probs: np.ndarray, cap: int, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(pool rows, labels): `cap` rows for every class (fewer only when the pool runs out), each class taking in turn
    its next most likely row, by that class's own probability, that no class took before; rows whose top probability
    is under `threshold` are never taken.

    Ranking every class by its own probability, not by the teacher's top choice, is what keeps a class the teacher
    under-predicts in the game (top-k per class, as TK-KNN does): on the embedded intents a 70 %-accurate teacher's
    top choices held 1 confident "damaged item" message among 1,448, and a cap on top choices then gave 61 rows to
    some intents and 1 to others, and none at all in the next round."""
    eligible = np.flatnonzero(probs.max(axis=1) >= threshold)
    if len(eligible) == 0 or cap <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    num_classes = probs.shape[1]
    rankings = [eligible[np.argsort(-probs[eligible, c], kind="stable")] for c in range(num_classes)]
    positions, counts = [0] * num_classes, [0] * num_classes
    owner: dict[int, int] = {}
    while True:
        progressed = False
        for c in range(num_classes):
            ranking = rankings[c]
            while counts[c] < cap and positions[c] < len(ranking) and int(ranking[positions[c]]) in owner:
                positions[c] += 1
            if counts[c] < cap and positions[c] < len(ranking):
                owner[int(ranking[positions[c]])] = c
                counts[c] += 1
                progressed = True
        if not progressed:
            break
    indices = np.array(sorted(owner), dtype=np.int64)
    return indices, np.array([owner[i] for i in indices], dtype=np.int64)


def describe_round(round_number: int, pool: Pool, indices, labels, label_names, cap, threshold, teacher: Path) -> dict:
    """The round's entry in all_results.json: counts per class and, where true labels are known, their accuracy."""
    hidden = pool.hidden_labels[indices]
    known = hidden != UNKNOWN
    teacher_results = json.loads((teacher / "all_results.json").read_text(encoding="utf-8"))
    return {
        "round": round_number,
        "pool": len(pool),
        "taken": int(len(indices)),
        "cap_per_class": int(cap),
        "threshold": round(float(threshold), 4),
        "pseudo_labels_per_class": {name: int((labels == i).sum()) for i, name in enumerate(label_names)},
        "pseudo_label_accuracy": float((labels[known] == hidden[known]).mean()) if known.any() else None,
        "pseudo_labels_with_known_truth": int(known.sum()),
        "teacher": f"{ROUNDS_DIR}/{teacher.name}",
        "teacher_test_accuracy": teacher_results.get("accuracy"),
    }


def predict_pool(scenario, folder: Path, pool: Pool, config: TrainConfig) -> tuple[np.ndarray, dict]:
    """Probabilities of the saved model in `folder` for every pool row (at its calibrated temperature), and the
    folder's settings."""
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from fmhub.training.loaders import build_dataloader
    from fmhub.training.setup import logits_of, model_inputs

    settings = ModelFolder(folder).read()
    model, processor = scenario.load_model(folder)
    device = PartialState().device  # under `accelerate launch`: this process's own GPU
    model.to(device).eval()
    dataset = scenario.make_dataset(pool.dataset, processor, config, train=False)
    loader = build_dataloader(dataset, config, scenario.collate_fn(processor, config), train=False)
    temperature = settings.get("temperature", 1.0)
    parts = []
    with torch.no_grad():
        for batch in tqdm(loader, desc="pseudo-labelling", unit="batch", disable=_quiet()):
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            parts.append((logits_of(model(**model_inputs(batch))).float() / temperature).softmax(-1).cpu().numpy())
    return np.concatenate(parts), settings


def pseudo_labels_for(scenario, config, pool: Pool, round_number: int, rounds: int, label_names, out: Path,
                      is_main: bool) -> PseudoLabels:
    """The pseudo-labels round `round_number` trains on: read back when a previous (killed) run chose them, else
    chosen with the previous round's model and saved (main process)."""
    path = out / ROUNDS_DIR / f"pseudo-labels-{round_number}.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["record"]["pool"] != len(pool):
            raise FmhubError(f"the unlabelled pool has {len(pool)} examples, but {path} was chosen from "
                             f"{saved['record']['pool']}: the data changed; start over with --overwrite")
        return PseudoLabels(np.asarray(saved["indices"], np.int64), np.asarray(saved["labels"], np.int64),
                            saved["record"])
    teacher = out / ROUNDS_DIR / f"round-{round_number - 1}"
    probs, settings = predict_pool(scenario, teacher, pool, config)
    # never a pseudo-label from an input the served model would turn away as out of scope
    threshold = max(config.pseudo_label_threshold, float(settings.get("oos_threshold", 0.0)))
    cap = round_cap(len(pool), len(label_names), round_number, rounds)
    indices, labels = select_pseudo_labels(probs, cap, threshold)
    record = describe_round(round_number, pool, indices, labels, label_names, cap, threshold, teacher)
    confident = probs.argmax(1)[probs.max(1) >= threshold]
    record["candidates_per_class"] = {name: int((confident == i).sum()) for i, name in enumerate(label_names)}
    if is_main:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"indices": indices.tolist(), "labels": labels.tolist(), "record": record}),
                       encoding="utf-8")
        os.replace(tmp, path)  # whole or absent: a kill while writing leaves no half a file to trust
    return PseudoLabels(indices, labels, record)


# -- the training split of a round ------------------------------------------------------------------------------------
def training_split(labelled, pool: Pool, pseudo: PseudoLabels | None):
    """The labelled rows, plus the pseudo-labelled pool rows (input and label columns only, as the labelled ones)."""
    import datasets

    if pseudo is None or not len(pseudo.indices):
        return labelled
    fmt = labelled.format
    columns = [c for c in labelled.column_names if c in pool.dataset.column_names]
    base = labelled.with_format(None).select_columns(columns)
    taken = pool.dataset.with_format(None).select(pseudo.indices.tolist()).select_columns(columns)
    taken = replace_labels(taken, pseudo.labels.tolist())
    if taken.features != base.features:
        taken = taken.cast(base.features)
    combined = datasets.concatenate_datasets([base, taken])
    kept = [c for c in (fmt["columns"] or []) if c in combined.column_names] or None
    return combined.with_format(fmt["type"], columns=kept, output_all_columns=fmt["output_all_columns"])


def build_pool(scenario, config: TrainConfig, train, label_names) -> tuple[object, Pool]:
    """(labelled training rows, unlabelled pool): the rest of train under --labels-per-class, then the
    --unlabeled-data rows."""
    import datasets

    labelled, pool = train, None
    if config.labels_per_class:
        labelled, pool = split_off_pool(train, config.labels_per_class, config.seed)
    if config.unlabeled_data:
        extra = scenario.load_unlabeled(config.unlabeled_data, train, label_names)
        if extra.skipped_unreadable:
            print(f"--unlabeled-data {config.unlabeled_data}: {extra.skipped_unreadable} unreadable example(s) "
                  "skipped")
        if not len(extra):
            raise FmhubError(f"--unlabeled-data {config.unlabeled_data} holds no readable examples "
                             f"({extra.skipped_unreadable} unreadable skipped)")
        if pool is None:
            pool = extra
        else:
            columns = [c for c in pool.dataset.column_names if c in extra.dataset.column_names]
            ours = pool.dataset.with_format(None).select_columns(columns)
            theirs = extra.dataset.with_format(None).select_columns(columns)
            if theirs.features != ours.features:
                theirs = theirs.cast(ours.features)
            pool = Pool(datasets.concatenate_datasets([ours, theirs]).with_format(**_format_of(pool.dataset)),
                        np.concatenate([pool.hidden_labels, extra.hidden_labels]), extra.skipped_unreadable)
    return labelled, pool


def _format_of(ds) -> dict:
    fmt = ds.format
    return {"type": fmt["type"], "columns": fmt["columns"], "output_all_columns": fmt["output_all_columns"]}


# -- the rounds -------------------------------------------------------------------------------------------------------
def prepare_output_dir(config: TrainConfig, out: Path) -> None:
    """Main process: the same refusals as a plain run, and a folder holding rounds needs --resume or --overwrite."""
    from fmhub.runner import check_output_dir

    if config.resume_from:
        raise FmhubError("--resume-from names one checkpoint; a semi-supervised run has one per round: use --resume")
    check_output_dir(config)
    rounds = out / ROUNDS_DIR
    if config.overwrite:
        shutil.rmtree(rounds, ignore_errors=True)
        if out.is_dir():
            checkpoints.remove_run(out)
    elif rounds.exists() and not config.resume:
        raise FmhubError(f"{out} already holds the rounds of a semi-supervised run; add --resume to continue it, "
                         "--overwrite to start over, or choose an empty --output-dir")
    OutputFolder(out).claim()  # the final round trains here, beside rounds/
    rounds.mkdir(exist_ok=True)


def check_same_run(config: TrainConfig, out: Path, pool_size: int, is_main: bool) -> None:
    """A resumed run reuses finished rounds only if they were trained with these settings and this pool: the
    settings are kept in `rounds/run.json` at the start and compared on --resume (by the main process)."""
    if not is_main:
        return
    settings = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE}
    settings["unlabeled_pool"] = pool_size
    path = out / ROUNDS_DIR / "run.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if changed:
            raise FmhubError(f"--resume: {out} was started with other settings ({', '.join(changed[:5])} differ); "
                             "give the same flags, or start over with --overwrite")
    else:
        path.write_text(json.dumps(settings, indent=2, default=str), encoding="utf-8")


def round_is_done(folder: Path) -> bool:
    return ModelFolder(folder).is_fmhub_model() and (folder / "README.md").is_file()


def train_semi_supervised(config: TrainConfig, progress=None, fault_hook=None) -> Path:
    """Rounds of self-training; returns the final model folder (--output-dir)."""
    import datasets
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from fmhub.runner import train

    state = PartialState()
    scenario = get_scenario(config.scenario)
    out = Path(config.output_dir).expanduser()
    if state.is_main_process:
        prepare_output_dir(config, out)
    state.wait_for_everyone()
    with state.main_process_first():
        data = scenario.load_splits(config)
    label_names = scenario.label_names(data)
    labelled, pool = build_pool(scenario, config, data["train"], label_names)
    rounds = config.self_training_rounds if pool is not None and len(pool) else 0
    check_same_run(config, out, len(pool) if pool is not None else 0, state.is_main_process)
    state.wait_for_everyone()
    report = {
        "method": METHOD if rounds else "labelled examples only",
        "labels_per_class": config.labels_per_class,
        "labelled_examples": len(labelled),
        "unlabeled_data": config.unlabeled_data,
        "unlabeled_pool": len(pool) if pool is not None else 0,
        "skipped_unreadable": pool.skipped_unreadable if pool is not None else 0,
        "rounds": [],
    }
    pseudo = None
    bar = tqdm(total=rounds + 1, desc="self-training rounds", unit="round", disable=_quiet() or not rounds)
    try:
        for number in range(rounds + 1):
            splits = datasets.DatasetDict({"train": training_split(labelled, pool, pseudo),
                                           "validation": data["validation"], "test": data["test"]})
            bar.set_postfix(round=number, train=len(splits["train"]))
            step_progress = _round_progress(progress, number, rounds)
            if number == rounds:  # the last round's model is the run's: saved in --output-dir itself
                last = replace(config, resume=bool(checkpoints.latest(out)), resume_from=None, overwrite=False)
                folder = train(last, progress=step_progress, fault_hook=fault_hook, splits=splits,
                               extra_results={"semi_supervised": report})
                bar.update(1)
                return folder
            folder = out / ROUNDS_DIR / f"round-{number}"
            if not round_is_done(folder):
                this = replace(config, output_dir=str(folder), resume=bool(checkpoints.latest(folder)),
                               resume_from=None, overwrite=False, push_to_hub=False, export="none")
                train(this, progress=step_progress, fault_hook=fault_hook, splits=splits)
                if state.is_main_process:
                    checkpoints.remove_run(folder)  # the round's saved model is all a later round needs
            state.wait_for_everyone()
            pseudo = pseudo_labels_for(scenario, config, pool, number + 1, rounds, label_names, out,
                                       state.is_main_process)
            report["rounds"].append(pseudo.record)
            if state.is_main_process:
                _print_round(pseudo.record)
            bar.update(1)
    finally:
        bar.close()
    raise AssertionError("unreachable: the last round returns")


def _round_progress(progress, number: int, rounds: int):
    if progress is None:
        return None
    return lambda fraction, what: progress((number + fraction) / (rounds + 1), f"round {number}/{rounds}: {what}")


def _print_round(record: dict) -> None:
    accuracy = record["pseudo_label_accuracy"]
    shown = f", {accuracy:.1%} correct" if accuracy is not None else ""
    print(f"round {record['round']}: {record['taken']} of {record['pool']} unlabelled examples pseudo-labelled "
          f"(at most {record['cap_per_class']} per class{shown})")


def _quiet() -> bool:
    return os.environ.get("TQDM_DISABLE", "") not in ("", "0")
