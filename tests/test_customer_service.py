"""Customer service end to end with a real tiny BERT: train, evaluate, save/load, predict CLI, chat replies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fmhub.cli import main
from fmhub.data import intents
from fmhub.predictors.text import MAX_TEXT_CHARS, clean_text
from fmhub.serving import load_predictor


def test_embedded_data_is_large_varied_and_split_without_leaks():
    splits = intents.load_embedded_intents()
    counts = {}
    for split in splits.values():
        for row in split:
            counts[row["label"]] = counts.get(row["label"], 0) + 1
    assert set(counts) == set(intents.INTENTS) | {intents.OUT_OF_SCOPE}
    assert min(counts[label] for label in intents.INTENTS) >= 60
    assert counts[intents.OUT_OF_SCOPE] >= 200
    keys = {name: {intents._key(r["text"]) for r in rows} for name, rows in splits.items()}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    assert set(intents.load_faq()) == set(intents.INTENTS)


def test_training_writes_a_standard_folder_with_results(tiny_intent_model):
    folder = tiny_intent_model
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "fmhub.json",
        "all_results.json",
        "classification_report.txt",
        "confusion_matrix.png",
        "train_config.yaml",
        "README.md",
        "training_curves.png",
    ):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert sorted(config["id2label"].values()) == sorted(intents.INTENTS)
    results = json.loads((folder / "all_results.json").read_text())
    # a 2-layer, 64-wide random BERT still learns the intents well above chance (1/12)
    assert results["accuracy"] > 0.5, results["accuracy"]
    assert 0 <= results["oos_threshold"] <= 1
    assert results["num_examples"] == sum(results["per_class"][n]["support"] for n in intents.INTENTS)
    extras = json.loads((folder / "fmhub.json").read_text())
    assert extras["scenario"] == "customer-service" and set(extras["faq"]) == set(intents.INTENTS)


def test_saved_folder_loads_with_plain_transformers_pipeline(tiny_intent_model):
    code = (
        "import sys, json\n"
        "from transformers import pipeline\n"
        f"clf = pipeline('text-classification', model={str(tiny_intent_model)!r})\n"
        "out = clf('where is my package')\n"
        "assert 'fmhub' not in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    label = json.loads(proc.stdout.strip().splitlines()[-1])[0]["label"]
    assert label in intents.INTENTS


def test_evaluate_cli_writes_metrics(tiny_intent_model, tmp_path, capsys):
    code = main(
        [
            "evaluate",
            "--scenario",
            "customer-service",
            "--model",
            str(tiny_intent_model),
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"accuracy", "macro_f1", "roc_auc"} <= set(printed)
    written = json.loads((tmp_path / "all_results.json").read_text())
    assert written["accuracy"] == pytest.approx(printed["accuracy"])
    # the same model and split as training's own test pass
    trained = json.loads((tiny_intent_model / "all_results.json").read_text())
    assert written["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-6)
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000


def test_evaluate_on_a_jsonl_file(tiny_intent_model, tmp_path):
    data = tmp_path / "mine.jsonl"
    rows = [
        {"text": "where is my parcel", "label": "order_status"},
        {"text": "hello!", "label": "greeting"},
        {"text": "please cancel it", "label": "cancel_order"},
        {"text": "bye now", "label": "goodbye"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    assert (
        main(
            [
                "evaluate",
                "--scenario",
                "customer-service",
                "--model",
                str(tiny_intent_model),
                "--data",
                str(data),
                "--output-dir",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "ev" / "all_results.json").read_text())["num_examples"] == 4


def test_predict_cli_jsonl_contract(tiny_intent_model, tmp_path):
    inputs = tmp_path / "in.jsonl"
    texts = ["where is my package", "I want to talk to a human", "", "🙂🙂", "مرحبا، أين طلبي؟"]
    inputs.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    out = tmp_path / "out.jsonl"
    assert (
        main(
            [
                "predict",
                "--scenario",
                "customer-service",
                "--model",
                str(tiny_intent_model),
                "--input-file",
                str(inputs),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == len(texts)
    for line in lines:
        assert {"label", "score", "scores", "answer", "handoff"} <= set(line)
        assert isinstance(line["score"], float)
    assert lines[0]["label"] in intents.INTENTS + [intents.OUT_OF_SCOPE]
    assert lines[0]["scores"] and abs(sum(lines[0]["scores"].values()) - 1) < 1e-4
    assert lines[2]["label"] == "empty" and "type a message" in lines[2]["answer"]


def test_chat_replies_faq_handoff_and_out_of_scope(tiny_intent_model):
    predictor = load_predictor("customer-service", str(tiny_intent_model))
    faq = intents.load_faq()
    result = predictor.predict(["where is my package"])[0]
    if result["label"] != "out_of_scope":
        assert result["answer"] == faq[result["intent"]]
    # force each decision through the real post-processing
    original = predictor.threshold
    try:
        predictor.threshold = 1.01  # nothing is confident enough -> out of scope, polite hand-off
        oos = predictor.predict(["what's the weather in Paris"])[0]
        assert oos["label"] == "out_of_scope" and oos["handoff"] and "human" in oos["answer"]
        predictor.threshold = 0.0
        human = predictor._decide(_one_hot(predictor, "human_agent"))
        assert human["label"] == "human_agent" and human["handoff"] and human["answer"] == faq["human_agent"]
    finally:
        predictor.threshold = original


def _one_hot(predictor, label):
    import numpy as np

    vec = np.zeros(len(predictor.label_names))
    vec[predictor.label_names.index(label)] = 1.0
    return vec


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t ",
        "a" * 100_000,
        "order\x00status\x07 where",
        "where is \ud800 my order",
        "📦📦📦 where??",
        "أين طلبي",
        "שלום, איפה ההזמנה שלי",
    ],
    ids=["empty", "whitespace", "100k", "control", "surrogate", "emoji", "arabic", "hebrew"],
)
def test_bad_text_gets_a_clear_reply(tiny_intent_model, text):
    predictor = load_predictor("customer-service", str(tiny_intent_model))
    result = predictor.predict([text])[0]
    assert isinstance(result["answer"], str) and result["answer"]
    cleaned = clean_text(text)
    assert len(cleaned) <= MAX_TEXT_CHARS and "\x00" not in cleaned
    cleaned.encode("utf-8")  # valid UTF-8 after cleaning
    if cleaned:
        tokens = predictor.processor(cleaned, truncation=True, max_length=predictor.max_length)["input_ids"]
        assert len(tokens) <= predictor.max_length


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--scenario",
                "customer-service",
                "--data",
                str(tmp_path / "missing.jsonl"),
                "--output-dir",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data not found" in err[0]
    assert (
        main(
            [
                "train",
                "--scenario",
                "customer-service",
                "--model",
                "no-such-user/no-such-model",
                "--output-dir",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-user/no-such-model" in err[-1]
    with pytest.raises(SystemExit) as exc:
        main(["train", "--scenario", "customer-service", "--epochs", "zero"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["train", "--scenario", "customer-service", "--epochs", "0", "--output-dir", str(tmp_path)]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err
