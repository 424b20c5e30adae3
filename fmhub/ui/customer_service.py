"""Customer-service tab: a chat that answers from the FAQ, shows intent and confidence, hands off to a human."""

from __future__ import annotations

import gradio as gr

from fmhub.predictors.text import MAX_TEXT_CHARS, clean_text
from fmhub.ui.common import friendly_errors, summary_markdown
from fmhub.ui.models import ModelNotReady, ModelSlot

EXAMPLES = [
    "Hi there!",
    "where is my package? it was supposed to arrive on monday",
    "I was charged twice for the same order",
    "can I send it to my office address instead",
    "the headphones arrived with a cracked case",
    "I want to talk to a real person",
    "what's the capital of Australia?",
]


def format_reply(result: dict) -> str:
    if result["label"] == "empty":
        return result["answer"]
    if result["label"] == "out_of_scope":
        tag = f"out of scope (closest intent `{result['intent']}`, confidence {result['score']:.0%}) · handed off"
    else:
        tag = f"intent `{result['intent']}` · confidence {result['score']:.0%}"
        if result["handoff"]:
            tag += " · handed off to a human"
    return f"{result['answer']}\n\n<sub>{tag}</sub>"


def build_customer_service_tab(slot: ModelSlot) -> None:
    gr.Markdown(
        "Ask the shop's assistant anything about orders, delivery, returns, payments or your account. "
        "It detects your intent, answers from the FAQ, and hands you to a human when you ask for one or when "
        "your question is outside what it knows."
    )
    summary = gr.Markdown(summary_markdown(slot))
    chatbot = gr.Chatbot(label="Customer service", height=380)
    with gr.Row():
        message = gr.Textbox(
            placeholder="Type your message...",
            show_label=False,
            scale=5,
            max_length=MAX_TEXT_CHARS,
            elem_id="cs-message",
        )
        send = gr.Button("Send", variant="primary", scale=1, elem_id="cs-send")
    details = gr.JSON(label="Intent details", visible=True)
    gr.Examples(EXAMPLES, inputs=message)

    @friendly_errors
    def respond(text: str, history: list | None):
        history = list(history or [])
        try:
            result = slot.get().predict([text if isinstance(text, str) else ""])[0]
        except ModelNotReady as err:
            shown = clean_text(text) if isinstance(text, str) else ""
            return (
                history
                + [
                    {"role": "user", "content": shown or "…"},
                    {"role": "assistant", "content": f"The model is not ready yet: {err}."},
                ],
                "",
                None,
                summary_markdown(slot),
            )
        shown = clean_text(text) or "…"
        history += [{"role": "user", "content": shown}, {"role": "assistant", "content": format_reply(result)}]
        details_value = {k: result[k] for k in ("label", "intent", "score", "handoff")}
        details_value["top_scores"] = dict(sorted(result["scores"].items(), key=lambda kv: -kv[1])[:3])
        return history, "", details_value, summary_markdown(slot)

    @friendly_errors
    def classify(text: str) -> dict:
        """API: the full prediction (label, score, scores, intent, answer, handoff) for one message."""
        return slot.get().predict([text if isinstance(text, str) else ""])[0]

    outputs = [chatbot, message, details, summary]
    send.click(respond, [message, chatbot], outputs, api_name="chat")
    message.submit(respond, [message, chatbot], outputs, api_name=False)
    gr.api(classify, api_name="classify_intent")
