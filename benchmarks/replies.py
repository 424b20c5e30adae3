"""Written replies (`--replies generate`): how often the reply model's reply passes the grounding guard, and how fast.

Every message of `benchmarks/data/reply_eval.jsonl` (132 customer messages over the 12 intents, written for this and
kept apart from the training data) goes through the customer-service default (intent, out of scope, hand-off) and then
through `fmhub.replies.ReplyWriter` exactly as in the chat: the reply is generated and kept, or the FAQ text answers
(with the reason). Then the speed on 2 cores: first-token latency of the chat's replies, and a 40-token reply (forced
to 40 new tokens) on 20 of the messages.

    FMHUB_HOME=<home with the defaults> python benchmarks/replies.py --output benchmarks/results/replies.json

Prints the rates, the fallback reasons, the timings and 20 sample replies next to their template (markdown).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, write_json  # noqa: E402

EVAL_SET = ROOT / "benchmarks" / "data" / "reply_eval.jsonl"


def forty_token_seconds(writer, message: str, result: dict, tokens: int = 40) -> tuple[float, float]:
    """(first token s, whole reply s) for a reply forced to exactly `tokens` new tokens, the chat's prompt."""
    import threading

    import torch
    from transformers import TextIteratorStreamer

    from fmhub.replies import help_text, prompt_messages

    input_ids, cache = writer._encode(prompt_messages(message, [], help_text(message, result["answer"],
                                                                            writer.sentences)))
    streamer = TextIteratorStreamer(writer.tokenizer, skip_prompt=True)
    t0 = time.perf_counter()

    def run():
        with torch.inference_mode():
            writer.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                  cache=cache, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                  streamer=streamer)

    worker = threading.Thread(target=run)
    worker.start()
    first = None
    for piece in streamer:
        if first is None and piece:
            first = time.perf_counter() - t0
    worker.join()
    return first, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="customer-service model (default: the embedded default)")
    parser.add_argument("--reply-model", help="reply model (default: the PyPI SmolLM2-135M-Instruct GGUF)")
    parser.add_argument("--sentences", type=int, default=1, help="FAQ sentences given to the model")
    parser.add_argument("--free-vocabulary", action="store_true", help="let the model use any token")
    parser.add_argument("--limit", type=int, help="only the first N messages (a quick look)")
    parser.add_argument("--output", help="JSON file for the results")
    args = parser.parse_args()

    import torch

    from fmhub.replies import ReplyWriter
    from fmhub.serving import load_predictor

    torch.set_num_threads(2)
    rows = [json.loads(line) for line in EVAL_SET.read_text().splitlines() if line.strip()][: args.limit]
    predictor = load_predictor("customer-service", args.model)
    t0 = time.perf_counter()
    writer = ReplyWriter(args.reply_model, sentences=args.sentences, grounded_vocabulary=not args.free_vocabulary)
    if not writer.wait():
        raise SystemExit(f"reply model failed to load: {writer.error}")
    load_s = time.perf_counter() - t0
    records = []
    for n, row in enumerate(rows, 1):
        result = predictor.predict([row["text"]])[0]
        reply, info = writer.write(row["text"], result)
        records.append({"text": row["text"], "intent": row["intent"], "predicted": result["label"],
                        "template": result["answer"], "reply": reply, **info.as_dict()})
        print(f"[{n}/{len(rows)}] {info.source:9s} {row['text'][:60]!r} -> {reply[:90]!r}", file=sys.stderr)
    generated = [r for r in records if r["reply_source"] == "generated"]
    reasons = Counter(r.get("template_because", "") for r in records if r["reply_source"] == "template")
    guard = Counter(g.split(":")[0] for r in records for g in r.get("guard_rejected", []))
    firsts = [r["first_token_seconds"] for r in records if r.get("first_token_seconds") is not None]
    timed = [forty_token_seconds(writer, r["text"], predictor.predict([r["text"]])[0])
             for r in records if r["predicted"] not in ("out_of_scope",) and r["template"]][:20]
    summary = {
        "messages": len(records),
        "generated_and_passed": len(generated),
        "generated_rate": len(generated) / len(records),
        "fallback_rate": 1 - len(generated) / len(records),
        "template_reasons": dict(reasons),
        "guard_reasons": dict(guard),
        "intent_accuracy": sum(r["predicted"] == r["intent"] for r in records) / len(records),
        "first_token_p50_s": statistics.median(firsts) if firsts else None,
        "forty_token_reply_p50_s": statistics.median(t for _, t in timed),
        "forty_token_first_token_p50_s": statistics.median(f for f, _ in timed),
        "reply_model_load_s": round(load_s, 1),
        "sentences": args.sentences,
        "grounded_vocabulary": writer.grounded_vocabulary,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(summary, indent=2))
    print("\n| message | intent | template (FAQ) | generated reply |\n|---|---|---|---|")
    shown = [r for r in records if r["reply_source"] == "generated"][:: max(1, len(generated) // 20)][:20]
    for r in shown:
        cells = [r["text"], r["predicted"], r["template"][:160] + ("…" if len(r["template"]) > 160 else ""),
                 r["reply"]]
        print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if args.output:
        write_json(args.output, {"summary": summary, "records": records})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
