"""Grounding guard for generated customer-service replies (issue #18).

A small LLM rewrites the matching FAQ entry into a reply to the customer's message. Small models invent things:
prices, refund windows, URLs, phone numbers, named policies, promises and actions they cannot take. `check_reply`
accepts a reply only when every such fact is grounded in the FAQ entry or the customer's own messages, every promise
is one the FAQ makes, and the reply agrees with the decision already taken (hand-off, out of scope). When it fails,
the chat shows the FAQ text instead and the reasons go into the details JSON.

Pure `re`, no model: it must be cheap enough to run on every reply (well under a millisecond) and predictable enough
to test. It errs on the side of falling back: a false alarm costs a canned answer, a missed invention costs trust.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["Verdict", "check_reply"]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...]


# ---------------------------------------------------------------------------------------------------------------------
# Normalisation: lower case, plain dashes, number words as digits, so "thirty days" and "30 days" compare equal.

_UNITS_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS_WORDS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
               "ninety": 90}  # fmt: skip
# "first", "second" and "third" are left out: "first, open Account > Orders", "a second", "third-party".
_ORDINAL_WORDS = {"fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10,
                  "eleventh": 11, "twelfth": 12, "fourteenth": 14, "fifteenth": 15, "twentieth": 20,
                  "thirtieth": 30}  # fmt: skip
_TIME_UNIT = (
    r"(?:working |business |calendar )?(?:minutes?|mins?|hours?|hrs?|h|days?|weeks?|months?|years?|fortnights?)"
)
_UNIT_BASE = {"min": "minute", "minute": "minute", "hr": "hour", "h": "hour", "hour": "hour", "day": "day",
              "week": "week", "month": "month", "year": "year", "fortnight": "fortnight", "%": "%",
              "percent": "%"}  # fmt: skip

# "one" alone is a pronoun far more often than a number ("a new one", "one of our colleagues"): it counts only before a
# time unit, and "a"/"an" count as one only in a duration ("within a week", "after an hour").
_NUMBER_WORD = re.compile(
    r"\b(?:(?P<tens>" + "|".join(_TENS_WORDS) + r")(?:[- ](?P<unit>" + "|".join(w for w in _UNITS_WORDS if w != "zero")
    + r"))?|(?P<small>" + "|".join(w for w in _UNITS_WORDS if w != "one") + r")|(?P<ord>" + "|".join(_ORDINAL_WORDS)
    + r"))\b"
)
_ONE_UNIT = re.compile(r"\bone(?=\s+" + _TIME_UNIT + r"\b)")
_A_DURATION = re.compile(
    r"\b(within|in|after|for|under|about|around|over|than|takes?|up to|per|at least|at most|only|roughly|just)\s+"
    r"(?:a|an|one)\s+(?=" + _TIME_UNIT + r"\b)"
)


def _number_word(match: re.Match) -> str:
    if match["tens"]:
        return str(_TENS_WORDS[match["tens"]] + (_UNITS_WORDS[match["unit"]] if match["unit"] else 0))
    if match["small"]:
        return str(_UNITS_WORDS[match["small"]])
    return str(_ORDINAL_WORDS[match["ord"]])


def _normalise(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"[\u2010-\u2015\u2212]", "-", text)
    text = re.sub(r"\ba couple of\b", "2", text)
    text = _A_DURATION.sub(lambda m: m[1] + " 1 ", text)
    text = _ONE_UNIT.sub("1", text)
    text = _NUMBER_WORD.sub(_number_word, text)
    return re.sub(r"\b(\d+) hundred\b", lambda m: str(int(m[1]) * 100), text)


def _plain(text: str) -> str:
    """Letters and digits only, one space between words: for 'does this phrase occur there' checks."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower().replace("'", "")))


def _canon_number(raw: str) -> str:
    raw = re.sub(r",(?=\d{3}\b)", "", raw).replace(",", ".")
    if "." in raw:
        raw = raw.rstrip("0").rstrip(".")
    return raw.lstrip("0") or "0"


_STEM_SUFFIXES = ("ations", "ation", "ments", "ment", "ing", "ed", "es", "s", "ly", "e")


def _stem(word: str) -> str:
    for suffix in _STEM_SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiou":
        word = word[:-1]  # shipped -> shipp -> ship, cancelled -> cancell -> cancel
    return word.rstrip("e")


def _stems(text: str) -> frozenset[str]:
    return frozenset(_stem(w) for w in re.findall(r"[a-z]+", text.lower()))


# ---------------------------------------------------------------------------------------------------------------------
# Facts that must be grounded: contacts (URLs, e-mails, phones), times, prices, numbers with their units, dates.

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(
    r"\bhttps?://[^\s<>\"')\]]+|\bwww\.[^\s<>\"')\]]+"
    r"|\b[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*\.(?:com|org|net|io|co|uk|de|fr|eu|us|info|biz|shop|store|help|app|ai|me|ly)"
    r"\b(?:/[^\s<>\"')\]]*)?",
    re.IGNORECASE,
)
_PHONE = re.compile(r"(?<![\w.])\+?\(?\d[\d ().-]{5,}\d(?![\w])")
_TIME = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*(am|pm|a\.m\.|p\.m\.|o'clock)(?![a-z])|\b(\d{1,2}):(\d{2})\b")
_CURRENCY = r"(?:[$€£¥]|usd|eur|gbp)"
_NUM = r"\d+(?:[.,]\d+)*"
_PRICE = re.compile(
    rf"{_CURRENCY}\s?(?P<a>{_NUM})|(?P<b>{_NUM})\s?(?:[$€£¥]|(?:usd|eur|gbp|dollars?|euros?|pounds?|bucks|cents?)\b)"
)
_QUANTITY = re.compile(
    rf"(?<![\d.,])(?:between\s+)?(?P<lo>{_NUM})(?:st|nd|rd|th)?"
    rf"(?:\s*(?:-|to|and)\s*(?P<hi>{_NUM})(?:st|nd|rd|th)?)?"
    rf"(?:\s*(?P<unit>%|percent\b|{_TIME_UNIT}\b))?"
)
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = ("january", "february", "march", "april", "june", "july", "august", "september", "october", "november",
           "december")  # fmt: skip
_DATE = re.compile(
    r"\b(?:(?:next|this|coming|last)\s+(?:week(?:end)?|month|year|morning|afternoon|evening|" + "|".join(_WEEKDAYS)
    + r")|end of (?:the )?(?:day|week|month)|same[- ]day|" + "|".join(_WEEKDAYS + _MONTHS)
    + r"|today|tonight|tomorrow|yesterday|weekend|overnight|midnight|noon|christmas|easter)\b"
)
# "may" is a month only next to a day number ("5 May", "May 5th"); otherwise it is the verb.
_MAY = re.compile(r"\b\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?may\b|\bmay\s+\d{1,2}(?:st|nd|rd|th)?\b")


def _unit(raw: str | None) -> str:
    if not raw:
        return ""
    word = raw.split()[-1]
    return _UNIT_BASE.get(word, _UNIT_BASE.get(word.rstrip("s"), word))


def _blank(text: str, pattern: re.Pattern) -> tuple[str, list[str]]:
    """Remove a pattern's matches (so later rules don't see their digits again) and return them."""
    found = [m.group(0) for m in pattern.finditer(text)]
    return pattern.sub(" ", text), found


def _time_key(match: re.Match) -> str:
    if match.group(4):
        return f"{int(match.group(4))}:{match.group(5)}"
    suffix = match.group(3).replace(".", "")
    return f"{int(match.group(1))}{':' + match.group(2) if match.group(2) and match.group(2) != '00' else ''}{suffix}"


@dataclass(frozen=True)
class _Facts:
    emails: frozenset[str]
    urls: frozenset[str]
    phones: frozenset[str]
    times: frozenset[str]
    prices: tuple[tuple[str, str], ...]  # (as written, canonical number)
    quantities: tuple[tuple[str, str, str], ...]  # (as written, canonical number, unit base or "")
    dates: tuple[str, ...]
    numbers: frozenset[str]  # every number anywhere in the text, before blanking: for grounding, not for checking


def _url_key(url: str) -> str:
    url = re.sub(r"^https?://", "", url.lower()).rstrip(".,;:!?")
    return re.sub(r"^www\.", "", url).rstrip("/")


# Set phrases that name a day without dating anything: "what can I do for you today?", "have a great weekend".
_PLEASANTRY = re.compile(
    r"\b(?:help|assist|do for|support)\s+you(?:\s+with)?(?:\s+\w+){0,2}?\s+today\b"
    r"|\b(?:have|enjoy) (?:a |your )?(?:\w+ )?(?:day|evening|weekend|week)\b"
    r"|\bgood (?:morning|afternoon|evening|night)\b"
)
_LIST_MARKER = re.compile(r"(?m)^\s*(?:step\s+)?\d{1,2}[.):]\s")


@functools.lru_cache(maxsize=512)
def _facts(text: str) -> _Facts:
    norm = _LIST_MARKER.sub(" ", _PLEASANTRY.sub(" ", _normalise(text)))
    numbers = frozenset(_canon_number(n) for n in re.findall(_NUM, norm))
    norm, emails = _blank(norm, _EMAIL)
    norm, urls = _blank(norm, _URL)
    phones = [p for p in _PHONE.findall(norm) if len(re.sub(r"\D", "", p)) >= 7]
    for phone in phones:
        norm = norm.replace(phone, " ")
    times = frozenset(_time_key(m) for m in _TIME.finditer(norm))
    norm = _TIME.sub(" ", norm)
    prices = tuple((m.group(0).strip(), _canon_number(m["a"] or m["b"])) for m in _PRICE.finditer(norm))
    norm = _PRICE.sub(" ", norm)
    dates = tuple(m.group(0) for m in _DATE.finditer(norm)) + tuple(m.group(0) for m in _MAY.finditer(norm))
    norm = _MAY.sub(" ", norm)
    quantities = []
    for m in _QUANTITY.finditer(norm):
        for raw in (m["lo"], m["hi"]):
            if raw:
                quantities.append((m.group(0).strip(), _canon_number(raw), _unit(m["unit"])))
    return _Facts(
        emails=frozenset(e.lower() for e in emails),
        urls=frozenset(_url_key(u) for u in urls),
        phones=frozenset(re.sub(r"\D", "", p) for p in phones),
        times=times,
        prices=prices,
        quantities=tuple(quantities),
        dates=dates,
        numbers=numbers,
    )


def _merge(a: _Facts, b: _Facts) -> _Facts:
    pairs = zip(vars(a).values(), vars(b).values())
    return _Facts(*(x | y if isinstance(x, frozenset) else x + y for x, y in pairs))


def _fact_reasons(reply: str, faq: str, customer: str) -> list[str]:
    got, have = _facts(reply), _merge(_facts(faq), _facts(customer))  # the FAQ's facts are cached across messages
    have_plain = _plain(f"{faq}\n{customer}")
    have_digits = have.phones | have.numbers
    reasons = [f"invented e-mail address: {e}" for e in sorted(got.emails - have.emails)]
    reasons += [f"invented url: {u}" for u in sorted(got.urls) if u not in have.urls and _plain(u) not in have_plain]
    reasons += [f"invented phone number: {p}" for p in sorted(got.phones - have_digits)]
    reasons += [f"invented time: {t}" for t in sorted(got.times - have.times)]
    reasons += [f"invented price: {text}" for text, value in got.prices if value not in have.numbers]
    pairs = {(value, unit) for _, value, unit in have.quantities}
    for text, value, unit in got.quantities:
        grounded = (value, unit) in pairs if unit else value in have.numbers
        if not grounded and f"invented number: {text}" not in reasons:
            reasons.append(f"invented number: {text}")
    for date in got.dates:
        grounded = _plain(date) in have_plain if " " in date else _plain(date) in have_plain.split()
        if not grounded and f"invented date: {date}" not in reasons:
            reasons.append(f"invented date: {date}")
    return reasons


# ---------------------------------------------------------------------------------------------------------------------
# Named things: Title-Cased multi-word names, quoted labels, the assistant introducing itself by a name.

# Words that may start a sentence (or stand capitalised) without being part of a name.
_COMMON = frozenset(
    """a about absolutely after all also an and any as at be but by can certainly check choose click could dear do
    don't drop enjoy feel follow for from glad go good great have head hello hey hi how i if in is it it's just keep
    let let's make many most no not of oh ok okay on once open or our pick please print select sadly see send simply
    so sorry start sure take thank thanks that the then there these this to try unfortunately use we we'll we're
    welcome well what when where while yes you you'll you're your have happy here afraid really very bye goodbye
    cheers apologies perfect awesome definitely wonderful course there's""".split()
)
_CAP_WORD = r"[A-Z][A-Za-z0-9'\u2019-]*"
_CONNECTORS = ("&", "of", "and", "the", "for", "a", "to")
_TITLE_RUN = re.compile(rf"{_CAP_WORD}(?:\s+(?:(?:&|of|and|the|for|a|to)\s+)?{_CAP_WORD})+")
_NOT_NAME_WORDS = re.compile(r"\bI(?:'m|'ll|'ve|'d|\u2019m|\u2019ll|\u2019ve|\u2019d)?\b")
_QUOTED = re.compile(r"[\"\u201c\u201d]([^\"\u201c\u201d\n]{1,60})[\"\u201c\u201d]|(?<![\w])'([^'\n]{2,40})'(?![\w])")
_SELF_NAME = re.compile(r"\b(?:I'm|I am|my name is|my name's|this is)\s+([A-Z][a-z]+)\b")
_SIGN_OFF = re.compile(
    r"\b(?i:best|regards|cheers|sincerely|yours|thanks|thank you),?\s*\n?\s*-?\s*([A-Z][a-z]+)\W*$"
)  # the sign-off words in any case, the name capitalised ("yourself" is not "yours" + "elf")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n]\s*|^\W+)$")


def _name_reasons(reply: str, grounds: str) -> list[str]:
    have_plain = f" {_plain(grounds)} "
    have_words = set(have_plain.split())
    reasons = []
    for match in _QUOTED.finditer(reply):
        label = (match[1] or match[2]).strip()
        if len(label.split()) <= 6 and f" {_plain(label)} " not in have_plain and _plain(label):
            reasons.append(f"invented name: '{label}'")
    text = _QUOTED.sub(" ", reply)
    text = _NOT_NAME_WORDS.sub(".", text)  # "I" is capitalised but never part of a name; it also splits runs
    text = re.sub(r"\b(?:" + "|".join(w.title() for w in _WEEKDAYS + _MONTHS) + r")\b", ".", text)
    for match in _TITLE_RUN.finditer(text):
        words = match.group(0).split()
        if _SENTENCE_START.search(text[: match.start()]) and words[0].lower() in have_words:
            words = words[1:]
        while words and (words[0].lower() in _COMMON or words[0] in _CONNECTORS):
            words = words[1:]
        if sum(1 for w in words if w[:1].isupper()) >= 2 and f" {_plain(' '.join(words))} " not in have_plain:
            reasons.append(f"invented name: '{' '.join(words)}'")
    for match in re.finditer(_CAP_WORD, text):  # a lone capitalised word mid-sentence: a brand, carrier or person
        word = match.group(0).strip("'\u2019-")
        key = _plain(word)
        if (
            key
            and key not in _COMMON
            and key not in have_words
            and not _SENTENCE_START.search(text[: match.start()])
            and not any(f"'{word}" in r or f" {word}" in r for r in reasons)
        ):
            reasons.append(f"invented name: '{word}'")
    for pattern in (_SELF_NAME, _SIGN_OFF):
        for match in pattern.finditer(reply):
            name = match[1]
            if name.lower() not in _COMMON and name.lower() not in have_words:
                reasons.append(f"invented person name: {name}")
    return reasons


# ---------------------------------------------------------------------------------------------------------------------
# Promises: commitment patterns, each supported only when the FAQ entry itself makes it (the customer asking for a
# refund today does not let the bot promise one). A pattern's key words are its own content words unless it names
# alternatives: any alternative whose stems all occur in the FAQ supports it.

_STOP = frozenset(
    """a an the we i you your it its our us me my will 'll ll shall can would could am are is be been being going to
    for of on in at with and or that this these those have has had 've ve just already now also get gets got give
    send out back up as so all any some there their them they he she his her""".split()
)
_WILL = r"(?:'ll|\s+will|\s+shall|\s+can|\s+would|\s+am going to|\s+are going to|'m going to|'re going to)"
_WHEN_WORDS = (r"immediately|right away|straight away|instantly|right now|asap|as soon as possible|today|tonight|"
               r"tomorrow|within the hour|same[- ]day")  # fmt: skip
_NOW = (("now",), ("immediately",), ("right", "away"), ("instantly",))
_ACTIONS = (r"refunded|cancel+ed|processed|shipped|sent|issued|changed|updated|reset|unlocked|arranged|credited|"
            r"replaced|dispatched|booked|approved|initiated|started|submitted|deleted|applied|waived|reversed|"
            r"resolved|fixed|redirected|rerouted|reordered|reactivated|escalated|forwarded|transferred|"
            r"passed")  # fmt: skip
_HANDOFF_ACTIONS = frozenset({"escalated", "forwarded", "transferred", "passed"})

_PROMISES = tuple(  # (pattern, alternatives | None: its own content words | "when": a time commitment)
    (re.compile(pattern), alternatives)
    for pattern, alternatives in (
        (rf"\b(?:we|i){_WILL}\s+(?:\w+\s+){{0,2}}?(?:refund|reimburse)\w*", (("refund",), ("money", "back"))),
        (rf"\b(?:we|i){_WILL}\s+(?:\w+\s+){{0,2}}?(?:send|ship|post|mail|give|get)\s+(?:you\s+)?"
         r"(?:a|an|another|your)?\s*(?:brand[- ]new|new|replacement|another|second|fresh)\b", (("replacement",),)),
        (r"\bfree of charge\b|\bfor free\b|\bat no (?:extra |additional )?(?:cost|charge)\b", (("free",),)),
        (r"\bfree\s+(?!of\b|to\b|and\b|for\b)[a-z]+", None),
        (r"\bno (?:extra |additional )?(?:cost|charge|fee)s?\b", (("free",), ("pay", "anyth"))),
        (r"\bcompensat\w*|\bdiscount\w*|\bvouchers?\b|\bcoupons?\b|\bstore credit\b|\bgoodwill\b|\bcashback\b"
         r"|\bgifts?\b(?: cards?)?|\bpromo(?:tional)? codes?\b|\bbonus\w*", None),
        (r"\b(?:small |extra |additional |handling |restocking |cancell?ation |admin |service )?fees?\b", None),
        (r"\bguarantee\w*|\bpromise\w*|\bi assure you\b|\bwarrant(?:y|ies)\b", None),
        (r"\bprioriti[sz]\w*|\bpriority\b|\bexpedit\w*|\bupgrad\w*|\bfast[- ]track\w*", None),
        (rf"\b(?:will|'ll|shall|going to|gonna)\b[^.!?;]{{0,60}}?\b(?:{_WHEN_WORDS})\b", "when"),
        (r"\b(?:is|are|be|been|get|gets)\s+(?:\w+\s+){0,2}?(?:processed|refunded|sent|shipped|dispatched|delivered|"
         rf"cancel+ed|resolved|fixed|credited|issued|approved|replaced|back)\s+(?:\w+\s+){{0,3}}?(?:{_WHEN_WORDS})\b",
         "when"),
    )
)
# Any other "we'll <verb>" / "I will <verb>" is a commitment too: its verb must be one the FAQ uses ("we'll look into
# it"), or a harmless one. Sending and e-mailing count as the same act. An adverb is not the verb ("we'll also send"
# is judged by "send"), and a phrase whose verb is not written yet (a streamed reply checked at "...we'll also" or
# "...we'll make sure to") is judged once it is: the check of the finished reply still sees every commitment.
_ADVERBS = r"also|then|gladly|happily|personally|just|now|still|definitely|certainly"
_COMMITMENT = re.compile(
    r"\b(?:we|i)(?:'ll|\s+will|\s+shall|\s+are going to|'re going to|'m going to|\s+am going to)"
    rf"\s+(?:(?:{_ADVERBS})\s+|make sure to\s+)*"
    rf"(?!(?:{_ADVERBS})\b|make(?:\s+sure(?:\s+to)?)?\s*$)([a-z]+(?:-[a-z]+)?)"
)
_HARMLESS_VERBS = frozenset("be help assist do try see need have keep let get answer explain guide show".split())
_HANDOFF_VERBS = frozenset("pass connect transfer hand put forward escalate".split())
_SAME_ACT = {"send": ("e-mail", "email", "mail", "send"), "email": ("e-mail", "send"), "e-mail": ("email", "send")}
_CLAIMS = (
    re.compile(
        rf"\b(?:i|we)(?:'ve|\s+have|'d|\s+had)\s+(?:already\s+|just\s+|now\s+|gone ahead and\s+)?({_ACTIONS})\b"
    ),
    re.compile(rf"\b(?:i|we)\s+(?:just\s+|already\s+|now\s+)?({_ACTIONS})\s+(?:your|the|it|this|that|them)\b"),
    re.compile(r"\byour (?:order|refund|return|cancellation|replacement|password|address|account|parcel|package|item|"
               rf"request|payment|money)s? (?:has|have|is|was) (?:already |now |just )?(?:been )?({_ACTIONS})\b"),
    re.compile(r"\bi(?:'m| am) (?:now |currently |already )?(cancel+ing|refunding|processing|issuing|resetting|"
               r"changing|updating|arranging|sending|shipping|unlocking|replacing)\b"),
)


# The assistant cannot see orders: a status it states must come from the FAQ or the customer ("it says in transit").
_STATUS = re.compile(
    r"\b(?:i(?:'ve| have)?\s+(?:just\s+)?(?:checked|looked (?:it )?up|looked into it|located|tracked)"
    r"|i can see that)\b"
    r"|\b(?:your|the) (?:order|parcel|package|item|shipment|delivery|refund)s?\s+(?:#?\w*\d\w*\s+)?(?:is|was|has been)"
    r"\s+(?:currently\s+|now\s+|already\s+)?(?P<status>out for delivery|in transit|delivered|delayed|lost|on its way|"
    r"at (?:the|our) (?:depot|warehouse)|being (?:prepared|packed|processed)|stuck|held|in customs)"
)


# Nor can it see the stock: "your red kettle is still in stock!" is a claim (a customer asking "is it in stock?" or
# saying "it's sold out" does not ground it), and the FAQ's conditional ("if something is sold out", "as soon as it's
# back in stock") grounds no statement about their item. Only a conditional may name a stock status. "Available
# for/to/..." is about something else ("express delivery is available for most items"), and a streamed reply that
# stops at "available" is judged when the next word is there.
_STOCK = re.compile(
    r"\b(?:it|they|(?:your|the|this|that|these|those) [a-z-]+(?: [a-z-]+)?)(?: is| are|'s|'re)\s+"
    r"(?:still |now |currently |already |definitely |back )*(?P<status>in stock|sold out|out of stock|discontinued|"
    r"(?:un)?available(?! (?:for|to|on|at|in|via|from|with)\b)(?!\s*$))\b"
)
_CONDITIONAL = re.compile(r"\b(?:if|when|once|as soon as|whether|until|unless|whenever)\s+$")


def _when_supported(phrase: str, faq_stems: frozenset[str]) -> bool:
    word = re.search(_WHEN_WORDS, phrase)[0]
    if word in ("today", "tonight", "tomorrow") or word.startswith("same"):
        return _stem(word.split("-")[0].split()[0]) in faq_stems
    return any(all(_stem(w) in faq_stems for w in alt) for alt in _NOW)


def _promise_reasons(reply_norm: str, faq: str, grounds: str, *, handoff: bool) -> list[str]:
    faq_stems = _stems(faq)
    faq_plain = _plain(faq)
    grounds_plain = _plain(grounds)
    reasons = []
    for pattern, alternatives in _PROMISES:
        for match in pattern.finditer(reply_norm):
            phrase = match.group(0).strip()
            if alternatives == "when":
                supported = _when_supported(phrase, faq_stems)
            elif alternatives is None:
                keys = [w for w in re.findall(r"[a-z]+", phrase) if w not in _STOP]
                supported = all(_stem(w) in faq_stems for w in keys)
            else:
                supported = any(all(_stem(w) in faq_stems for w in alt) for alt in alternatives)
            if not supported:
                reasons.append(f"promise not in the FAQ: '{phrase}'")
    for match in _COMMITMENT.finditer(reply_norm):
        verb = match[1]
        if verb in _HARMLESS_VERBS or (handoff and verb in _HANDOFF_VERBS):
            continue
        acts = (verb, *_SAME_ACT.get(verb, ()))
        if not any(_stem(act.replace("-", "")) in faq_stems or act in faq.lower() for act in acts):
            reasons.append(f"promise not in the FAQ: '{match.group(0).strip()}'")
    for match in _STATUS.finditer(reply_norm):
        if not match["status"] or _plain(match["status"]) not in grounds_plain:
            reasons.append(f"claims to know the order's status: '{match.group(0).strip()}'")
    for match in _STOCK.finditer(reply_norm):
        if not _CONDITIONAL.search(reply_norm[max(0, match.start() - 12) : match.start()]):
            reasons.append(f"claims to know the stock: '{match.group(0).strip()}'")
    for pattern in _CLAIMS:
        for match in pattern.finditer(reply_norm):
            if handoff and match[1] in _HANDOFF_ACTIONS:
                continue
            if _plain(match.group(0)) not in faq_plain:
                reasons.append(f"claims an action it cannot take: '{match.group(0).strip()}'")
    return reasons


# ---------------------------------------------------------------------------------------------------------------------
# The decision: a hand-off reply must hand off; an out-of-scope reply must decline; an in-scope one must not hand off.

_HUMAN = re.compile(
    r"\b(?:human|colleague|agent|team|person|someone|representative|staff|specialist|advis[eo]r|support|connect\w*|"
    r"transfer\w*|pass\w* (?:you|this|it|your \w+) (?:on|along|to)|pass\w* (?:on|along)"
    r"|hand\w* (?:you |this )?(?:over|off)|put you through|escalat\w*)"
)
_DENY_HANDOFF = re.compile(
    r"\b(?:no need to|don't need to|do not need to|needn't)\s+(?:\w+\s+){0,3}?(?:human|agent|colleague|person|someone)"
    r"|\b(?:can't|cannot|can not|unable to|not able to|won't)\s+(?:\w+\s+){0,2}?(?:connect|transfer|put you through|"
    r"pass|hand)|\bno (?:humans?|agents?|colleagues?|one)\b[^.!?]{0,30}\bavailable"
    r"|\bi (?:can|will|'ll) (?:help|handle|sort|fix|solve|resolve|take care)\w*[^.!?]{0,40}\b(?:myself|instead)\b"
    r"|\bwithout (?:a |an )?(?:human|agent)"
)
_CLAIMS_HANDOFF = re.compile(
    r"\b(?:i'm|i am|i'll|i will|we'll|we will|let me)\s+(?:now\s+)?(?:connect\w*|transfer\w*|put you through|"
    r"hand\w* you over|pass\w* you|escalat\w*)"
)
_DECLINE = re.compile(
    r"\b(?:can't|cannot|can not|unable|not able|only (?:help|assist|answer)|outside|beyond|not something|"
    r"i'm afraid|i am afraid|(?:don't|do not) (?:know|have))\b"
)
_PROMPT_ECHO = re.compile(
    r"(?im)^\s*(?:faq(?: answer| entry)?|customer(?: message)?|reply|answer|assistant|user|system|instructions?|"
    r"response|context)\s*:|\bas an ai\b|\bas a (?:large )?language model\b|<\|[a-z_]+\|>|\[/?inst\]|^#{2,}"
)


def _decision_reasons(reply_norm: str, faq: str, *, handoff: bool, out_of_scope: bool) -> list[str]:
    reasons = []
    if handoff and (not _HUMAN.search(reply_norm) or _DENY_HANDOFF.search(reply_norm)):
        reasons.append("contradicts hand-off")
    if not handoff and _CLAIMS_HANDOFF.search(reply_norm) and not re.search(r"\bconnect|\btransfer", faq.lower()):
        reasons.append("claims a hand-off that was not decided")
    if out_of_scope and not _DECLINE.search(reply_norm):
        reasons.append("answers an out-of-scope message")
    return reasons


_NEGATION = re.compile(r"\b(?:not|no|never|cannot|can't|won't|don't|doesn't|didn't|isn't|aren't|wasn't|hasn't|"
                       r"haven't|shouldn't|nothing|none)\b|n't\b", re.IGNORECASE)


def _negation_reasons(reply: str, grounds: str) -> list[str]:
    """A small model turns the FAQ around with one word ("it's not lost", "you cannot return a bundle"): a reply may
    say no only where the FAQ entry or the customer does."""
    said = _NEGATION.search(reply.replace("\u2019", "'"))
    if said and not _NEGATION.search(grounds.replace("\u2019", "'")):
        return [f"a negation neither the FAQ nor the customer makes: '{said.group(0)}'"]
    return []


def check_reply(
    reply: str,
    faq: str,
    customer: list[str] | str,
    *,
    handoff: bool = False,
    out_of_scope: bool = False,
    max_chars: int = 600,
) -> Verdict:
    """Accept `reply` only if everything it states is grounded in `faq` or the customer's messages.

    `customer` is the customer's message or the conversation's customer messages (numbers, dates and names the
    customer gave may be repeated). Promises must be made by `faq` alone. Returns every reason found, not just the
    first, so the details JSON shows the whole picture.
    """
    text = (reply or "").strip()
    if not text:
        return Verdict(False, ("empty",))
    if len(text) > max_chars:
        return Verdict(False, (f"too long: {len(text)} > {max_chars} characters",))
    customer_text = customer if isinstance(customer, str) else "\n".join(customer)
    grounds = f"{faq}\n{customer_text}"
    reasons = []
    echo = _PROMPT_ECHO.search(text)
    if echo:
        reasons.append(f"prompt echo: '{echo.group(0).strip()}'")
    reply_norm = _normalise(text)
    reasons += _fact_reasons(text, faq, customer_text)
    reasons += _name_reasons(text, grounds)
    reasons += _promise_reasons(reply_norm, faq, grounds, handoff=handoff)
    reasons += _decision_reasons(reply_norm, faq, handoff=handoff, out_of_scope=out_of_scope)
    if not out_of_scope:  # declining is an out-of-scope reply's job
        reasons += _negation_reasons(text, grounds)
    return Verdict(not reasons, tuple(dict.fromkeys(reasons)))
