"""Customer-service tab: a chat that answers from the FAQ, shows intent and confidence, hands off to a human.

The chat history comes from the client, so it is bounded here: the last MAX_HISTORY_TURNS turns and at most
MAX_HISTORY_BYTES are kept (the reply never grows past that), and a history that is not a list of messages is refused
with one short line, in the page and in the log (the app's request-size cap refuses a huge body before it is parsed).
"""

from __future__ import annotations

import json
import logging

import gradio as gr
from gradio.components.chatbot import ChatbotDataMessages
from pydantic import ValidationError

from fmhub.predictors.text import MAX_TEXT_CHARS, clean_text
from fmhub.ui.common import friendly_errors, public_text, summary_markdown
from fmhub.ui.models import ModelLoadFailed, ModelNotReady, ModelSlot

log = logging.getLogger("fmhub.app")

MAX_HISTORY_TURNS = 20  # a turn: the user's message and the assistant's reply; older turns are dropped
MAX_HISTORY_BYTES = 100_000  # the kept history, as JSON, at most this; the oldest messages go first
HISTORY_REFUSED = "This chat history could not be read (it is not a list of chat messages). Please start a new chat."

EXAMPLES = [
    "Hi there!",
    "where is my package? it was supposed to arrive on monday",
    "I was charged twice for the same order",
    "can I send it to my office address instead",
    "the headphones arrived with a cracked case",
    "I want to talk to a real person",
    "what's the capital of Australia?",
]


def format_reply(result: dict, answer: str | None = None, written: bool = False) -> str:
    """The chat's reply: `answer` (default: the FAQ text) and a small line saying what decided it."""
    answer = result["answer"] if answer is None else answer
    if result["label"] == "empty":
        return answer
    if result["label"] == "out_of_scope":
        tag = f"out of scope (closest intent `{result['intent']}`, confidence {result['score']:.0%}) · handed off"
    else:
        tag = f"intent `{result['intent']}` · confidence {result['score']:.0%}"
        if result["handoff"]:
            tag += " · handed off to a human"
        if written:
            tag += " · written by the reply model from the FAQ"
    return f"{answer}\n\n<sub>{tag}</sub>"


def customer_messages(history: list) -> list[str]:
    """The customer's earlier messages in the (bounded) chat history, oldest first, as plain text."""
    texts = []
    for item in history:
        item = item.model_dump() if hasattr(item, "model_dump") else item
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, list):
            content = " ".join(c.get("text", "") for c in content if isinstance(c, dict))
        if isinstance(content, str) and content.strip():
            texts.append(clean_text(content))
    return texts


def _as_message(item):
    """A message as Gradio 6 models it; plain-text content (`"content": "hi"`) is accepted as API clients send it."""
    if isinstance(item, dict) and isinstance(item.get("content"), str):
        return {**item, "content": [{"type": "text", "text": item["content"]}]}
    return item


def bounded_history(value) -> ChatbotDataMessages | None:
    """The client's chat history, bounded: its last MAX_HISTORY_TURNS turns within MAX_HISTORY_BYTES, validated.

    Only what is kept is looked at, so a long history costs no more than a short one; anything that is not a list of
    chat messages raises a `gr.Error` with HISTORY_REFUSED, and the log gets one line (not the validation dump).
    """
    if value is None:
        return None
    if isinstance(value, ChatbotDataMessages):
        value = value.model_dump()
    if not isinstance(value, list):
        log.warning("chat history refused: a %s, not a list", type(value).__name__)
        raise gr.Error(HISTORY_REFUSED, print_exception=False)
    kept = [_as_message(item) for item in value[-2 * MAX_HISTORY_TURNS :]]
    sizes = [len(json.dumps(item, ensure_ascii=False, default=str).encode(errors="replace")) for item in kept]
    while kept and sum(sizes) > MAX_HISTORY_BYTES:
        kept, sizes = kept[1:], sizes[1:]
    try:
        return ChatbotDataMessages.model_validate(kept, context={"validate_meta": True})
    except ValidationError as err:
        first = err.errors(include_url=False, include_input=False)[0]
        log.warning("chat history refused: %d problem(s) in its last %d messages, first: %s at %s",
                    err.error_count(), len(kept), first.get("msg", "")[:200], str(first.get("loc", ""))[:100])
        raise gr.Error(HISTORY_REFUSED, print_exception=False) from None


def bounded_chatbot(**kwargs) -> gr.Chatbot:
    """A `gr.Chatbot` whose incoming value goes through `bounded_history` instead of Gradio's validation of the
    whole list: a 100,000-message history took seconds to validate and a malformed one logged megabytes of errors.

    Set on the instance, not in a subclass: Gradio writes a `.pyi` file next to the module of every Component
    subclass it sees defined.
    """
    chatbot = gr.Chatbot(**kwargs)
    chatbot.api_info()  # cached from Gradio's message model before it is switched off: clients see the usual schema
    chatbot.data_model = None  # Gradio then validates nothing before preprocess(); bounded_history does
    chatbot.preprocess = lambda payload: gr.Chatbot.preprocess(chatbot, bounded_history(payload))
    return chatbot


def build_customer_service_tab(slot: ModelSlot) -> None:
    writer = slot.reply_writer  # fmhub.replies.ReplyWriter under `--replies generate`, else None
    gr.Markdown(
        "Ask the shop's assistant anything about orders, delivery, returns, payments or your account. "
        "It detects your intent, answers from the FAQ, and hands you to a human when you ask for one or when "
        "your question is outside what it knows."
    )
    summary = gr.Markdown(summary_markdown(slot))
    chatbot = bounded_chatbot(label="Customer service", height=380)
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

    @friendly_errors(slot=slot)
    def respond(text: str, history: list | None):
        history = list(history or [])  # already bounded by bounded_chatbot
        earlier = customer_messages(history)
        shown = (clean_text(text) if isinstance(text, str) else "") or "…"
        try:
            result = slot.get().predict([text if isinstance(text, str) else ""])[0]
        except ModelNotReady as err:  # ModelLoadFailed too
            failed = isinstance(err, ModelLoadFailed)
            opening = "Sorry, I cannot answer right now" if failed else "The model is not ready yet"
            answer = f"{opening}: {public_text(err, slot)}."
            history += [{"role": "user", "content": shown}, {"role": "assistant", "content": answer}]
            yield history[-2 * MAX_HISTORY_TURNS :], "", None, summary_markdown(slot)
            return
        details_value = {k: result[k] for k in ("label", "intent", "score", "handoff")}
        details_value["top_scores"] = dict(sorted(result["scores"].items(), key=lambda kv: -kv[1])[:3])
        details_value["out_of_scope"] = result.get("out_of_scope")  # its scores, thresholds and what decided
        history += [{"role": "user", "content": shown}, {"role": "assistant", "content": format_reply(result)}]
        if writer is None:
            details_value["reply"] = {"reply_source": "template"}
            yield history[-2 * MAX_HISTORY_TURNS :], "", details_value, summary_markdown(slot)
            return
        for partial, info in writer.stream(clean_text(text) if isinstance(text, str) else "", result, earlier):
            if info is None:  # the reply model is writing: show what it has so far
                history[-1] = {"role": "assistant", "content": partial + " …"}
                yield history[-2 * MAX_HISTORY_TURNS :], "", details_value, gr.skip()
            else:
                history[-1] = {"role": "assistant",
                               "content": format_reply(result, partial, written=info.source == "generated")}
                details_value["reply"] = info.as_dict()
        yield history[-2 * MAX_HISTORY_TURNS :], "", details_value, summary_markdown(slot)

    @friendly_errors(slot=slot)
    def classify(text: str) -> dict:
        """API: the full prediction (label, score, scores, intent, answer, handoff) for one message."""
        return slot.get().predict([text if isinstance(text, str) else ""])[0]

    outputs = [chatbot, message, details, summary]
    send.click(respond, [message, chatbot], outputs, api_name="chat")
    message.submit(respond, [message, chatbot], outputs, api_name=False)
    gr.api(classify, api_name="classify_intent")
