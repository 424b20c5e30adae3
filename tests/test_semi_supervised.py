"""Semi-supervised fine-tuning (`--unlabeled-data`, `--labels-per-class`): the self-training rounds through the real
CLI and loop with the tiny BERT, class-balanced pseudo-labels, resume after a kill, and bad unlabelled inputs."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from fmhub import runner, semi_supervised
from fmhub.cli import main
from fmhub.data import intents
from fmhub.data.unlabeled import Pool, image_pool, labelled_indices, read_texts, split_off_pool
from fmhub.errors import FmhubError
from fmhub.semi_supervised import round_cap, select_pseudo_labels

INTENTS = intents.INTENTS[:3]  # few classes: a tiny teacher that predicts each of them after a few steps
PER_INTENT = {"train": 10, "validation": 3, "test": 4}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One torch thread for every test here (conftest's `one_thread`)."""


@pytest.fixture(scope="module")
def small_intents(tmp_path_factory) -> Path:
    """train/validation/test JSONL: 10/3/4 rows of each of three intents."""
    splits = intents.load_embedded_intents(seed=0)
    folder = tmp_path_factory.mktemp("ssl_intents")
    for split, limit in PER_INTENT.items():
        counts: dict[str, int] = {}
        rows = []
        for row in splits[split]:
            if row["label"] in INTENTS and counts.get(row["label"], 0) < limit:
                counts[row["label"]] = counts.get(row["label"], 0) + 1
                rows.append({"text": row["text"], "label": row["label"]})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def unlabelled_texts(tmp_path_factory) -> Path:
    """A JSONL of 10 texts without labels, two lines unreadable (not JSON, no text)."""
    rows = [json.dumps({"text": r["text"]}) for r in intents.load_embedded_intents(seed=0)["train"][-10:]]
    path = tmp_path_factory.mktemp("ssl_pool") / "pool.jsonl"
    path.write_text("\n".join([*rows, "{not json", json.dumps({"id": 3})]) + "\n")
    return path


def argv(data: Path, backbone: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--scenario", "customer-service", "--model", str(backbone), "--data", str(data),
            "--output-dir", str(out), "--epochs", "10", "--batch-size", "4", "--max-length", "24",
            "--learning-rate", "5e-3", "--head-learning-rate", "5e-3", "--no-freeze-embeddings",
            "--no-group-by-length", "--report-to", "none", "--labels-per-class", "4", "--seed", "1", *extra]


def results_of(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


# -- choosing pseudo-labels -------------------------------------------------------------------------------------------
def test_pseudo_labels_are_class_balanced_most_likely_first():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([0.3, 0.3, 0.3], size=300)
    probs[:200, 0] += 2.0  # class 0 predicted far more often than the others
    probs /= probs.sum(1, keepdims=True)
    assert np.bincount(probs.argmax(1), minlength=3)[0] > 150
    indices, labels = select_pseudo_labels(probs, cap=20, threshold=0.0)
    assert np.bincount(labels, minlength=3).tolist() == [20, 20, 20]  # the same number for every class
    assert len(set(indices.tolist())) == len(indices)  # a row goes to one class only
    # a class the teacher rarely picks still gets the rows most likely its own: its first pick is its top row
    first = int(np.argsort(-probs[:, 2])[0]) if int(np.argsort(-probs[:, 2])[0]) not in \
        (int(np.argsort(-probs[:, 0])[0]), int(np.argsort(-probs[:, 1])[0])) else None
    if first is not None:
        assert labels[indices == first].tolist() == [2]
    indices, labels = select_pseudo_labels(probs, cap=1000, threshold=0.0)
    assert len(indices) == 300 and np.bincount(labels, minlength=3).tolist() == [100, 100, 100]  # until none left
    indices, labels = select_pseudo_labels(probs, cap=1000, threshold=0.8)
    assert (probs.max(1)[indices] >= 0.8).all() and len(indices) == (probs.max(1) >= 0.8).sum()
    assert len(select_pseudo_labels(probs, cap=20, threshold=1.1)[0]) == 0
    assert [round_cap(100, 4, r, 2) for r in (1, 2)] == [7, 13]  # the share grows round by round


def test_labels_per_class_keeps_n_of_each_class_seeded():
    labels = np.repeat([0, 1, 2, -1], [10, 20, 5, 7])
    kept, rest = labelled_indices(labels, 3, seed=0)
    assert np.bincount(labels[kept] + 1).tolist() == [3, 3, 3, 3]
    assert sorted(kept + rest) == list(range(len(labels)))
    assert kept != labelled_indices(labels, 3, seed=1)[0]
    kept, _ = labelled_indices(labels, 0.5, seed=0)
    assert np.bincount(labels[kept] + 1).tolist() == [4, 5, 10, 2]  # a share, at least one row


# -- the rounds through the CLI ---------------------------------------------------------------------------------------
def test_self_training_runs_and_reports(small_intents, unlabelled_texts, tiny_text_backbone, tmp_path):
    out = tmp_path / "ssl"
    assert main(argv(small_intents, tiny_text_backbone, out, "--unlabeled-data", str(unlabelled_texts))) == 0
    report = results_of(out)["semi_supervised"]
    # 3 intents of 10 training rows, 4 of each kept; the rest and the file's 10 texts are the pool
    assert report["labelled_examples"] == 3 * 4
    assert report["unlabeled_pool"] == 3 * 6 + 10
    assert report["skipped_unreadable"] == 2
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for entry in report["rounds"]:
        counts = entry["pseudo_labels_per_class"]
        assert sum(counts.values()) == entry["taken"] and max(counts.values()) <= entry["cap_per_class"]
        assert len(set(counts.values())) <= 2  # the same number per class (one short where the pool ran out)
        assert entry["pseudo_labels_with_known_truth"] <= entry["taken"]
        if entry["pseudo_labels_with_known_truth"]:
            assert 0.0 <= entry["pseudo_label_accuracy"] <= 1.0
    assert report["rounds"][0]["cap_per_class"] < report["rounds"][1]["cap_per_class"]
    assert any(r["taken"] > 0 for r in report["rounds"])  # the loop did take pseudo-labels
    assert (out / "rounds" / "round-0" / "model.safetensors").is_file()
    assert (out / "rounds" / "round-1" / "model.safetensors").is_file()
    assert not list((out / "rounds" / "round-0").glob("checkpoint-*"))  # a finished round keeps its model only
    assert (out / "model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "## Semi-supervised training" in card and "pseudo-label accuracy" in card
    # labelled only: round 0 alone, trained on the same labelled rows
    base = tmp_path / "base"
    assert main(argv(small_intents, tiny_text_backbone, base, "--self-training-rounds", "0")) == 0
    assert results_of(base)["semi_supervised"]["rounds"] == []
    assert results_of(base)["accuracy"] == pytest.approx(report["rounds"][0]["teacher_test_accuracy"], abs=1e-6)


def test_killed_run_resumes_at_its_round(small_intents, tiny_text_backbone, tmp_path, monkeypatch, capsys):
    out = tmp_path / "killed"
    round_1 = out / "rounds" / "round-1"

    def kill_in_round_1(step, loss):
        if round_1.exists() and step == 3:  # after round 1's checkpoint at step 2
            raise KeyboardInterrupt
        return loss

    original = semi_supervised.train_semi_supervised  # what `fmhub train` runs for these flags
    monkeypatch.setattr(semi_supervised, "train_semi_supervised", functools.partial(original,
                                                                                    fault_hook=kill_in_round_1))
    args = argv(small_intents, tiny_text_backbone, out, "--self-training-rounds", "2", "--checkpoint-every-steps", "1")
    assert main(args) == 130
    monkeypatch.setattr(semi_supervised, "train_semi_supervised", original)
    round_0_weights = (out / "rounds" / "round-0" / "model.safetensors").stat().st_mtime_ns
    assert not (round_1 / "model.safetensors").exists() and (out / "rounds" / "pseudo-labels-1.json").is_file()
    assert main(args) == 2  # the folder holds a run: --resume or --overwrite
    assert "add --resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--labels-per-class", "5"]) == 2  # finished rounds learned from 4 per class
    assert "other settings (labels_per_class" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out  # round 1 went on from its checkpoint
    assert (out / "rounds" / "round-0" / "model.safetensors").stat().st_mtime_ns == round_0_weights  # not redone
    assert [r["round"] for r in results_of(out)["semi_supervised"]["rounds"]] == [1, 2]


def test_the_runner_alone_refuses_semi_supervised_flags(tmp_path):
    from fmhub.config import TrainConfig

    with pytest.raises(FmhubError, match="train_semi_supervised"):
        runner.train(TrainConfig(output_dir=str(tmp_path), labels_per_class=8))


# -- bad input --------------------------------------------------------------------------------------------------------
def test_a_labelled_text_file_is_refused(small_intents, tiny_text_backbone, tmp_path, capsys):
    code = main(argv(small_intents, tiny_text_backbone, tmp_path / "out", "--unlabeled-data",
                     str(small_intents / "train.jsonl")))
    assert code == 2
    err = capsys.readouterr().err
    assert "carries labels" in err and "--data" in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_unreadable_text_rows_are_skipped_and_counted(unlabelled_texts, tmp_path):
    texts, skipped = read_texts(unlabelled_texts)
    assert len(texts) == 10 and skipped == 2
    empty = tmp_path / "pool.csv"  # a label column with no labels in it (as the Hub's unsupervised splits: -1)
    empty.write_text("text,label\nhello there,\nwhere is my order,-1\n")
    assert read_texts(empty) == (["hello there", "where is my order"], 0)
    empty.write_text("text,label\nhello there,\nwhere is my order,order_status\n")
    with pytest.raises(FmhubError, match="carries labels"):
        read_texts(empty)


def test_semi_supervised_needs_an_output_dir_and_a_valid_count(capsys):
    assert main(["train", "--scenario", "customer-service", "--labels-per-class", "8"]) == 2
    assert "need --output-dir" in capsys.readouterr().err
    assert main(["train", "--output-dir", "x", "--labels-per-class", "2.5"]) == 2
    assert "whole number" in capsys.readouterr().err


@pytest.fixture
def tiny_image_split():
    from fmhub.data.image_data import arrays_to_datasets

    images = np.zeros((4, 16, 16, 3), np.uint8)
    return arrays_to_datasets({"train": (images, np.array([0, 1, 0, 1]), None)}, ["normal", "lesion"])["train"]


def test_unreadable_images_are_skipped_and_counted(tiny_image_split, tmp_path):
    from PIL import Image

    (tmp_path / "batch" / "inner").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "batch" / "a.png")
    Image.new("L", (20, 20), 128).save(tmp_path / "batch" / "inner" / "b.jpg")
    (tmp_path / "batch" / "broken.png").write_bytes(b"\x89PNG not an image")
    pool = image_pool(str(tmp_path / "batch"), tiny_image_split, ["normal", "lesion"])
    assert isinstance(pool, Pool) and len(pool) == 2 and pool.skipped_unreadable == 1
    assert pool.dataset[0]["image"].shape == (16, 16, 3)  # resized to the training images' size


def test_a_folder_of_class_subfolders_is_refused(tiny_image_split, tmp_path):
    from PIL import Image

    (tmp_path / "lesion").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "lesion" / "a.png")
    with pytest.raises(FmhubError, match="class subfolders .*lesion.*--data"):
        image_pool(str(tmp_path), tiny_image_split, ["normal", "lesion"])


def test_unreadable_audio_is_skipped_and_counted(tmp_path):
    import soundfile as sf

    from fmhub.data.unlabeled import audio_pool

    sf.write(tmp_path / "one.wav", (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32), 16000)
    (tmp_path / "two.wav").write_bytes(b"RIFF broken")
    pool = audio_pool(str(tmp_path), ["yes", "no", "_unknown_", "_silence_"])
    assert len(pool) == 1 and pool.skipped_unreadable == 1
    assert len(pool.dataset[0]["audio"]) == 16000


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_pseudo_labelled_rows_join_the_labelled_ones_in_the_training_split(modality):
    from fmhub.data.audio_data import CLIP, dataset_dict, waves_of
    from fmhub.data.image_data import arrays_to_datasets
    from fmhub.semi_supervised import PseudoLabels, training_split

    labels = np.array([0, 1] * 6)
    if modality == "image":  # as the embedded set: fixed-size arrays, numpy format, lesion masks beside them
        images = np.arange(12 * 8 * 8 * 3, dtype=np.int64).reshape(12, 8, 8, 3).astype(np.uint8)
        train = arrays_to_datasets({"train": (images, labels, np.zeros((12, 8, 8), bool))}, ["a", "b"])["train"]
    else:
        waves = np.arange(12 * CLIP, dtype=np.int64).reshape(12, CLIP).astype(np.int16)
        train = dataset_dict({"train": (waves, labels.tolist())}, ["a", "b"])["train"]
    labelled, pool = split_off_pool(train, 2, seed=0)
    assert set(pool.dataset["label"]) == {0} and sorted(pool.hidden_labels.tolist()) == [0] * 4 + [1] * 4
    combined = training_split(labelled, pool, PseudoLabels(np.array([1, 5]), np.array([1, 0]), {}))
    assert len(combined) == 6 and list(combined["label"])[-2:] == [1, 0]
    first = pool.dataset[1]["image"] if modality == "image" else waves_of(pool.dataset.select([1]))[0]
    joined = combined[4]["image"] if modality == "image" else waves_of(combined.select([4]))[0]
    assert np.array_equal(np.asarray(first), np.asarray(joined))  # the pool row itself, under its pseudo-label
