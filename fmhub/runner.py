"""The train and evaluate commands, for every scenario: data -> preprocess -> engine -> calibrate -> test -> save."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from fmhub import checkpoints, reports
from fmhub.card import write_model_card
from fmhub.config import TrainConfig
from fmhub.errors import FmhubError
from fmhub.metrics import compute_classification_metrics, headline
from fmhub.model_folder import ModelFolder, OutputFolder, RunLock, write_errors
from fmhub.paths import default_model_dir
from fmhub.registry import get_scenario
from fmhub.scenarios.base import Scenario
from fmhub.training.engine import Engine, ProgressCallback
from fmhub.training.loaders import build_dataloader, preserved_rng_state
from fmhub.training.setup import inverse_frequency_weights, make_accelerator, predict_probs, seed_everything


def evaluate_probs(scenario: Scenario, probs, labels, label_names, settings) -> dict:
    """Shared metrics on the labelled rows plus the scenario's own (out-of-scope recall, ...)."""
    inside = labels >= 0
    results = compute_classification_metrics(labels[inside], probs[inside], label_names)
    results.update(scenario.score_predictions(probs, labels, settings, label_names))
    return results


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling on validation predictions (grid search on the negative log-likelihood)."""
    logits = np.log(np.clip(probs, 1e-12, 1.0))
    best_t, best_nll = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(0.25), np.log(8.0), 81)):
        scaled = logits / t
        scaled -= scaled.max(axis=1, keepdims=True)
        log_p = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        nll = -log_p[np.arange(len(labels)), labels].mean()
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    return best_t


def _prepare_output_dir(config: TrainConfig, scenario: Scenario) -> tuple[Path, Path | None]:
    """(folder to train in, final cache folder or None). The cache default is trained aside and swapped in."""
    if config.output_dir:
        return Path(config.output_dir).expanduser(), None
    final = default_model_dir(scenario.name)
    work = final.parent / f".training-{scenario.name}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    return work, final


def check_output_dir(config: TrainConfig) -> None:
    """Refuse, before anything is written, a folder a live run holds, a run's folder without --resume, or a
    non-empty folder fmhub did not create without --overwrite. Read-only.

    `--resume` may continue a run in a folder fmhub did not create (a copy of a run's folder): the checkpoint's
    manifest is what is checked then.
    """
    if not config.output_dir:
        return
    out = Path(config.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise FmhubError(f"--output-dir {out} exists and is not a folder")
    folder = OutputFolder(out)
    folder.check_unlocked()
    if config.resume or config.resume_from:
        return
    if not config.overwrite and checkpoints.complete_checkpoints(out):
        raise FmhubError(
            f"{out} already holds checkpoints of a run; add --resume to continue it, --overwrite to start over "
            "(its checkpoints are deleted), or choose an empty --output-dir"
        )
    folder.check_writable(config.overwrite)


def _take_output_dir(config: TrainConfig, out: Path) -> RunLock:
    """Main process (the others wait): check, lock the folder for this run, mark it as fmhub's, tidy leftovers."""
    check_output_dir(config)
    folder = OutputFolder(out)
    fresh = not folder.foreign_entries()  # missing, empty or fmhub's own
    lock = folder.lock()
    try:
        with write_errors(f"--output-dir {out}"):
            if config.overwrite:
                checkpoints.remove_run(out)
            if fresh or config.overwrite:
                folder.claim()
            checkpoints.remove_leftovers(out)  # a checkpoint set aside by a crash mid-replace gets its name back
    except BaseException:
        lock.release()
        raise
    return lock


def train(config: TrainConfig, progress: ProgressCallback | None = None, fault_hook=None, splits=None,
          extra_results: dict | None = None) -> Path:
    """Fine-tune, calibrate, test and save. Returns the saved model folder.

    With --unlabeled-data or --labels-per-class, `fmhub.semi_supervised.train_semi_supervised` runs the rounds of
    self-training, each one a run of this function with `splits` (the DatasetDict it trains on instead of the
    scenario's data); `extra_results` go into all_results.json and the model card."""
    if config.semi_supervised and splits is None:
        raise FmhubError("--unlabeled-data and --labels-per-class are trained by "
                         "fmhub.semi_supervised.train_semi_supervised (what `fmhub train` runs)")
    scenario = get_scenario(config.scenario)
    backbone = scenario.resolve_backbone(config.model)
    out, final = _prepare_output_dir(config, scenario)
    accelerator = make_accelerator(config, out)
    lock = _take_output_dir(config, out) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    try:
        return _train(config, scenario, backbone, out, final, accelerator, lock, progress, fault_hook, splits,
                      extra_results)
    finally:
        if lock is not None:
            lock.release()


def _train(config, scenario, backbone, out, final, accelerator, lock, progress, fault_hook, splits=None,
           extra_results=None) -> Path:
    """The run itself, in a folder this process holds (main process: `lock`)."""
    seed_everything(config.seed)
    started = time.perf_counter()
    with accelerator.main_process_first():
        data = scenario.load_splits(config) if splits is None else splits
    label_names = scenario.label_names(data)
    model, processor = scenario.build_model(config, label_names)
    with accelerator.main_process_first():
        train_ds = scenario.make_dataset(data["train"], processor, config, train=True)
        val_ds = scenario.make_dataset(data["validation"], processor, config, train=False)
        test_ds = scenario.make_dataset(data["test"], processor, config, train=False)
    collate = scenario.collate_fn(processor, config)
    weights = None
    if config.class_weights == "auto":
        weights = inverse_frequency_weights(list(data["train"]["label"]), len(label_names))
    identity = {
        "scenario": scenario.name,
        "backbone": backbone,
        "label_names": label_names,
    }
    with preserved_rng_state():  # reading rows must not move the streams training draws from
        identity["data"] = checkpoints.data_fingerprint(data, label_names)

    def metrics(labels, probs):
        keep = labels >= 0
        return compute_classification_metrics(labels[keep], probs[keep], label_names)

    engine = Engine(
        config,
        accelerator,
        model,
        train_ds,
        val_ds,
        collate,
        metrics,
        output_dir=out,
        run_identity=identity,
        class_weights=weights,
        progress=progress,
        fault_hook=fault_hook,
    )
    result = engine.train()

    # calibrate on validation, then score the held-out test split once
    val_probs, val_labels = predict_probs(engine.model, engine.eval_dl, accelerator)
    settings = scenario.calibrate(val_probs, val_labels, label_names)
    if config.temperature_scaling:
        keep = val_labels >= 0
        settings["temperature"] = fit_temperature(val_probs[keep], val_labels[keep])
    if accelerator.is_main_process:
        settings.update(scenario.calibrate_model(accelerator.unwrap_model(engine.model), processor, data, config,
                                                 settings))
    test_dl = accelerator.prepare(build_dataloader(test_ds, config, collate, train=False))
    test_probs, test_labels = predict_probs(engine.model, test_dl, accelerator, settings.get("temperature", 1.0))
    results = evaluate_probs(scenario, test_probs, test_labels, label_names, settings)
    # scenario metrics that need the model itself (Grad-CAM localisation, false accepts per hour on a stream)
    results.update(
        scenario.score_model(accelerator.unwrap_model(engine.model), processor, data["test"], config, settings)
    )
    results["train_seconds"] = round(time.perf_counter() - started, 1)
    results["train_steps"] = result.steps
    results["best_validation_" + config.metric_for_best_model] = result.best_metric
    results.update(extra_results or {})

    if accelerator.is_main_process:
        with write_errors(f"the model folder {out}"):
            out = _save_run(config, scenario, backbone, engine, processor, out, final, label_names, settings, results,
                            result, lock)
    if config.export == "onnx" and accelerator.is_main_process:
        from fmhub.export import export_model

        export_model(out, data=config.data)
    accelerator.wait_for_everyone()
    if config.push_to_hub and accelerator.is_main_process:
        from fmhub.hub import push_model

        push_model(out, config.hub_repo_id, private=config.hub_private)
    accelerator.end_training()
    return final or out


def _save_run(config, scenario, backbone, engine, processor, out, final, label_names, settings, results, result,
              lock) -> Path:
    """Main process: the saved model folder, reports and card; the cache default swapped in. Returns the folder."""
    accelerator = engine.accelerator
    unwrapped = accelerator.unwrap_model(engine.model)
    shutil.rmtree(out / "onnx", ignore_errors=True)  # an export of earlier weights would no longer match
    scenario.save_model(unwrapped, processor, out, label_names)
    scenario.save_model_extras(out, settings)
    settings = {k: v for k, v in settings.items() if not k.startswith("_")}
    config.save(out / "train_config.yaml")
    reports.write_evaluation(results, out)
    reports.plot_training_curves(result.history, out / "training_curves.png", config.metric_for_best_model)
    reports.write_json(out / "training_history.json", {"history": result.history})
    manifest = {
        "scenario": scenario.name,
        "backbone": backbone,
        "label_names": label_names,
        "data": config.data,
        "pretrained": config.pretrained,
        **settings,
        "test_metrics": headline(results),
        "skipped_batches": result.skipped_batches,
    }
    ModelFolder(out).write(manifest)
    write_model_card(out, scenario, config, results, manifest)
    if final is not None:  # the cached default keeps no checkpoints or best-weights copy
        checkpoints.remove_run(out)
    OutputFolder(out).claim()  # the folder now holds this run's files only (also after a --resume)
    lock.release()  # before the swap or a push: the lock never leaves the folder it guards
    if final is not None:
        shutil.rmtree(out / "runs", ignore_errors=True)
        backup = final.parent / f".old-{scenario.name}-{os.getpid()}"
        if final.exists():
            os.replace(final, backup)
        os.replace(out, final)
        shutil.rmtree(backup, ignore_errors=True)
        out = final
    accelerator.print("test: " + ", ".join(f"{k}={v:.4f}" for k, v in headline(results).items()))
    accelerator.print(f"saved to {out} ({results['train_seconds']:.0f} s)")
    return out


def evaluate(
    scenario_name: str, folder: Path, data: str | None, output_dir: str | None = None, batch_size: int = 64,
    runtime: str | None = None,
) -> dict:
    """Score a saved model folder on a data set's test split (or a whole file); gathers across processes once.
    `runtime="onnx"` scores the folder's ONNX export on ONNX Runtime instead of the PyTorch weights."""
    from fmhub.onnx_runtime import check_runtime, load_onnx

    scenario = get_scenario(scenario_name)
    settings = ModelFolder(folder).read()
    if settings.get("scenario") != scenario.name:
        raise FmhubError(f"{folder} is a {settings.get('scenario')} model, not {scenario.name}")
    settings.update(scenario.load_model_extras(folder))
    label_names = settings["label_names"]
    config = TrainConfig(
        scenario=scenario.name,
        data=data,
        eval_batch_size=batch_size,
        report_to="none",
        **{k: v for k, v in scenario.defaults.items() if k in ("max_length", "image_size")},
    )
    accelerator = make_accelerator(config, None)
    runtime = check_runtime(runtime)
    model, processor = load_onnx(scenario, folder) if runtime == "onnx" else scenario.load_model(folder)
    with accelerator.main_process_first():
        split = scenario.load_eval_split(config, label_names)
        dataset = scenario.make_dataset(split, processor, config, train=False)
    loader = build_dataloader(dataset, config, scenario.collate_fn(processor, config), train=False)
    model, loader = accelerator.prepare(model, loader)
    probs, labels = predict_probs(model, loader, accelerator, settings.get("temperature", 1.0))
    results = evaluate_probs(scenario, probs, labels, label_names, settings)
    scored = accelerator.unwrap_model(model)
    if runtime == "onnx" and scenario.score_model_needs_weights:
        scored = scenario.load_model(folder)[0]  # Grad-CAM hooks PyTorch layers: the folder's weights explain
    results.update(scenario.score_model(scored, processor, split, config, settings))
    results["num_processes"] = accelerator.num_processes
    results["runtime"] = runtime
    if accelerator.is_main_process:
        target = Path(output_dir or Path("fmhub_eval") / scenario.name)
        reports.write_evaluation(results, target)
        results["output_dir"] = str(target)
    return results
