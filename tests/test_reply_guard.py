"""The grounding guard for generated customer-service replies (fmhub.reply_guard) and the reply evaluation set.

Two lists drive the guard's tests: inventions a small LLM really produces, which must fall back to the FAQ text, and
faithful paraphrases of the real FAQ entries, which must pass (a guard that rejects everything is useless).
"""

from __future__ import annotations

import difflib
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from fmhub.data import intents
from fmhub.reply_guard import Verdict, check_reply

ROOT = Path(__file__).resolve().parents[1]
EVAL_SET = ROOT / "benchmarks" / "data" / "reply_eval.jsonl"
FAQ = intents.load_faq()

# (intent, customer message, generated reply, a word the reason must contain)
MUST_FALL_BACK = [
    ("return_refund", "how much is a return?",
     "Returns are simple, and it costs $4.99 to send the parcel back.", "price"),
    ("shipping_info", "what does express cost",
     "Express delivery is just 7.50 euros and arrives next working day.", "price"),
    ("return_refund", "when do I get my money", "Once we have your parcel, we refund you within 14 days.", "14 days"),
    ("return_refund", "refund time?", "Refunds reach your original payment method within ten working days.", "10"),
    ("cancel_order", "cancel pls", "Cancel it under Account > Orders; the money is back within a week.", "1 week"),
    ("account_access", "link expired", "The reset link is valid for 48 hours, so check your spam folder.", "48 hours"),
    ("order_status", "where is it", "Please visit www.shop-help.com to follow your parcel.", "url"),
    ("order_status", "where is it", "You can track it at https://track.example.org/parcel?id=1.", "url"),
    ("shipping_info", "delivery countries?", "All countries are listed on shopdelivery.com.", "url"),
    ("order_status", "its late", "Sorry about that! Call us on 0800 123 4567 and we'll look into it.", "phone"),
    ("payment_problem", "charged twice", "Please ring +44 (20) 7946-0958 with your order number.", "phone"),
    ("order_status", "its late", "Send your order number to help@shop-support.com and we'll look into it.", "e-mail"),
    ("return_refund", "I want my money back", "No problem, we'll refund you right away.", "promise"),
    ("damaged_or_wrong_item", "it came broken",
     "So sorry! We'll send you a new one and give you a 10% discount.", "promise"),
    ("order_status", "late again",
     "Sorry for the wait - as compensation we'll add a voucher to your account.", "promise"),
    ("shipping_info", "how long does it take", "We'll prioritise your order so it ships faster.", "promise"),
    ("return_refund", "returns?", "Returns are guaranteed to be accepted within 30 days.", "promise"),
    ("order_status", "where's my stuff", "Don't worry, your parcel will arrive tomorrow.", "tomorrow"),
    ("cancel_order", "cancel order 5521", "I've cancelled your order for you.", "action"),
    ("return_refund", "refund order 88213", "Good news: we have already refunded order 88213.", "action"),
    ("change_address", "wrong address", "I have updated the delivery address on your order.", "action"),
    ("account_access", "locked out", "Your password has been reset, you can log in again.", "action"),
    ("return_refund", "can I return this",
     "Under our Gold Member Promise you can return anything within 30 days.", "name"),
    ("damaged_or_wrong_item", "broken lamp", "Your lamp is covered by the Premium Care Plan, so report it.", "name"),
    ("cancel_order", "how do I cancel", "Go to Account > Orders and press 'Stop Delivery'.", "name"),
    ("greeting", "hello",
     "Hi, I'm Sarah! I can help you with orders, deliveries, returns, payments and your account.", "person"),
    ("goodbye", "thanks bye", "Thanks for chatting with us, have a lovely day!\nBest, Tom", "person"),
    ("human_agent", "I want a real person",
     "I can help you with that myself - what seems to be the problem?", "hand-off"),
    ("human_agent", "agent please", "There's no need to talk to a human, I can sort this out for you.", "hand-off"),
    ("human_agent", "human!!", "Sure, what can I do for you today?", "hand-off"),
    ("order_status", "where is my order", "I'm transferring you to a colleague now.", "hand-off"),
    ("order_status", "where is my order", "FAQ answer: You can follow your order under Account > Orders.", "prompt"),
    ("goodbye", "bye", "As an AI, I don't have days, but have a lovely day!", "prompt"),
    ("order_status", "where is my order since friday",
     "It left our warehouse on Thursday, sorry it's late.", "thursday"),
    ("shipping_info", "express?", "Express orders placed before 4 pm arrive the next working day.", "time"),
    ("shipping_info", "delivery time?", "Your package should arrive within 2-3 business days.", "2-3 business days"),
    ("shipping_info", "is shipping free", "Shipping is free on orders over $50.", "price"),
    ("payment_problem", "how can I pay", "We accept Visa, Mastercard and PayPal.", "visa"),
    ("change_address", "I moved", "Once it has shipped, ask DHL to redirect the parcel.", "dhl"),
    ("order_status", "order 12345?", "I checked: your order #12345 is out for delivery.", "status"),
    ("product_availability", "in stock?", "It's sold out right now but will be back next week.", "next week"),
    ("account_access", "cant log in", "Please contact our Customer Support Team for help.", "name"),
    ("order_status", "where is it", "It should arrive in a couple of days.", "2 days"),
    ("cancel_order", "can I cancel", "Yes, cancelling only costs a small fee.", "fee"),
    ("order_status", "still not here", "Let me escalate this to the warehouse manager.", "hand-off"),
]  # fmt: skip

# (intent, customer message, faithful generated reply)
MUST_PASS = [
    ("order_status", "my order hasnt arrived since monday",
     "Sorry it hasn't arrived since Monday! You can follow it under Account > Orders, and if the tracking "
     "hasn't moved "
     "for more than five working days, send us your order number and we'll look into it for you."),
    ("order_status", "where is order 4471823?",
     "You can check order 4471823 under Account > Orders at any time, and the tracking link we e-mailed you shows "
     "where it is with the carrier."),
    ("order_status", "parcel late",
     "Your order is past its estimated delivery date? Please send us your order number and we'll look into it."),
    ("cancel_order", "cancel my order pls",
     "You can cancel free of charge while it hasn't been dispatched: open Account > Orders, pick the order and choose "
     "\"Cancel order\". The money goes back to your original payment method within three to five working days."),
    ("cancel_order", "I ordered 2 jackets and want to cancel one",
     "You can cancel single items too: go to Account > Orders, pick the order and choose 'Cancel order' for the "
     "second jacket - the option only shows while it hasn't been dispatched."),
    ("cancel_order", "too late to cancel?",
     "If the \"Cancel order\" option is no longer shown, the order is already on its way - you can simply return it "
     "once it arrives."),
    ("return_refund", "can I return shoes I bought",
     "Yes - most items can be returned within thirty days of delivery. Start a return under Account > Orders > "
     "\"Return items\" and print the free return label."),
    ("return_refund", "when is my refund coming",
     "Once our warehouse has received your parcel, we refund your original payment method within 5 working days."),
    ("return_refund", "can I swap for a bigger size",
     "Of course! You can choose an exchange for another size or colour in the same return form under Account > "
     "Orders > Return items."),
    ("change_address", "I moved, wrong address on order",
     "If your order hasn't been dispatched yet, you can update the address yourself under Account > Orders > "
     "\"Change delivery address\"."),
    ("change_address", "it already shipped to my old flat",
     "Once it has shipped we can no longer edit the address, but you can usually redirect the parcel to a pickup "
     "point via the carrier's tracking link."),
    ("shipping_info", "how long does delivery take",
     "Standard delivery usually takes 2-5 working days, and express delivery arrives the next working day for "
     "orders placed before 2 pm."),
    ("shipping_info", "do you ship to norway",
     "The full list of countries we deliver to is on the \"Shipping & Delivery\" page of our help centre, and the "
     "exact price for your address is shown at checkout."),
    ("shipping_info", "is shipping free?",
     "Orders above the free-shipping threshold shown in your basket ship for free; otherwise the cost is shown at "
     "checkout."),
    ("payment_problem", "my card got declined twice",
     "Sorry your card was declined twice! Declines usually come from the bank, so please double-check your card "
     "details and billing address or try another method like PayPal or Apple Pay."),
    ("payment_problem", "I was charged 59.90 two times",
     "The double charge of 59.90 is a temporary reservation from the failed attempt and disappears within a few "
     "working days."),
    ("payment_problem", "my promo code doesnt work",
     "Promo codes must be entered in the basket before you pay - if something still looks wrong, send us your "
     "order number and we'll check it."),
    ("account_access", "forgot my password",
     "Click \"Forgot password?\" on the login page and follow the link we e-mail you - it's valid for twenty-four "
     "hours, so check your spam folder too."),
    ("account_access", "account locked after too many tries",
     "Accounts locked after too many attempts unlock automatically after thirty minutes."),
    ("account_access", "how do I turn on 2fa",
     "You can manage two-factor authentication under Account > Settings."),
    ("product_availability", "when are the blue sneakers back in size 42?",
     "Sizes and colours are shown on the product page; if size 42 is sold out, click \"Notify me\" and we'll e-mail "
     "you as soon as it's back in stock."),
    ("product_availability", "can I preorder the new console",
     "Yes! Items marked \"Pre-order\" can be ordered now and ship on the release date shown on the product page."),
    ("damaged_or_wrong_item", "the mug arrived smashed",
     "We're really sorry! Please report it within 14 days under Account > Orders > \"Report a problem\" with a photo "
     "of the item and packaging, and we'll send you a free replacement."),
    ("damaged_or_wrong_item", "you sent me the wrong colour on friday",
     "So sorry the wrong colour arrived on Friday! Report it within fourteen days with a photo and we'll send you a "
     "free replacement or a full refund - you won't pay anything for sending it back."),
    ("human_agent", "can I talk to a human",
     "Of course - I'm connecting you with one of our human colleagues now. Please stay in this chat."),
    ("human_agent", "real person please, order 7781",
     "Sure, a colleague will take over shortly and see our conversation, so you won't need to repeat yourself about "
     "order 7781."),
    ("greeting", "hi",
     "Hi there, welcome to the shop! I can help you with orders, deliveries, returns, payments and your account."),
    ("greeting", "good morning, I'm Anna",
     "Good morning Anna, welcome! What can I do for you today - orders, deliveries, returns, payments or "
     "your account?"),
    ("goodbye", "thanks, that's all",
     "Thanks for chatting with us! Have a lovely day, and come back any time."),
    ("order_status", "hasn't arrived",
     "Sorry about the wait! You can follow your order under Account > Orders. Anything else I can help you with "
     "today?"),
    ("return_refund", "how do returns work",
     "1. Start a return under Account > Orders > Return items.\n2. Print the free return label.\n3. Drop the "
     "parcel off at a drop-off point."),
    ("goodbye", "bye and thanks Tom",
     "You're welcome - have a lovely day, and come back any time if you need anything else!"),
]  # fmt: skip


def _customer(message: str) -> list[str]:
    return [message]


@pytest.mark.parametrize(("intent", "message", "reply", "why"), MUST_FALL_BACK, ids=lambda v: str(v)[:30])
def test_inventions_fall_back(intent, message, reply, why):
    verdict = check_reply(reply, FAQ[intent], _customer(message), handoff=intent == "human_agent")
    assert not verdict.ok, reply
    assert any(why.lower() in reason.lower() for reason in verdict.reasons), verdict.reasons


@pytest.mark.parametrize(("intent", "message", "reply"), MUST_PASS, ids=lambda v: str(v)[:30])
def test_faithful_paraphrases_pass(intent, message, reply):
    verdict = check_reply(reply, FAQ[intent], _customer(message), handoff=intent == "human_agent")
    assert verdict == Verdict(True, ()), verdict.reasons


def test_every_intent_has_two_faithful_paraphrases_and_every_faq_text_passes_itself():
    counts = Counter(intent for intent, _, _ in MUST_PASS)
    assert set(counts) == set(intents.INTENTS) and min(counts.values()) >= 2
    for intent, answer in FAQ.items():
        assert check_reply(answer, answer, "", handoff=intent == "human_agent", max_chars=2000).ok, intent


def test_numbers_are_tied_to_their_units_and_to_the_customer():
    faq = FAQ["account_access"]
    assert check_reply("The link is valid for 24 hours.", faq, "").ok
    assert not check_reply("The link is valid for 24 days.", faq, "").ok  # 24 is grounded, 24 days is not
    assert not check_reply("Locked accounts unlock after 30 hours.", faq, "").ok
    assert check_reply("Sorry about the 3 failed logins!", faq, "I tried 3 times").ok
    assert not check_reply("Sorry about the 3 failed logins!", faq, "I tried a few times").ok
    shipping = FAQ["shipping_info"]
    assert check_reply("Standard delivery takes between two and five working days.", shipping, "").ok
    assert not check_reply("Standard delivery takes 1-3 working days.", shipping, "").ok


def test_a_commitment_is_judged_by_its_verb_not_an_adverb_nor_before_the_verb_is_written():
    stock, address = FAQ["product_availability"], FAQ["change_address"]
    # a streamed reply is checked at every whole word: "...we'll also" has no verb yet, so it is no promise yet
    for prefix in (
        "Sorry about that, we'll also",
        "Sorry, I'll just",
        "Please update it and we'll make sure to",
        "Please update it and we'll make",
        "We'll now",
    ):
        assert check_reply(prefix, address, "new address").ok, prefix
    # ... and once the verb is there it is judged as before: one the FAQ uses passes, any other does not
    assert check_reply("Click \"Notify me\" and we'll also e-mail you when it's back.", stock, "in stock?").ok
    for reply in (
        "Sorry about that, we'll also refund you.",
        "I'll just cancel it for you.",
        "We'll now reserve one for you.",
        "We'll make sure to refund it.",
        "Please update it and we'll make sure it's changed.",
    ):
        verdict = check_reply(reply, stock, "is it in stock")
        assert not verdict.ok and any("promise" in r for r in verdict.reasons), (reply, verdict.reasons)


def test_the_stock_of_the_customers_item_is_not_known():
    faq = FAQ["product_availability"]
    for reply, message in [
        ("I'm sorry your red kettle is still in stock!", "do you still sell the red kettle"),
        ("Good news, it's back in stock!", "is it back yet"),
        ("Yes, the TV is in stock.", "is the TV in stock"),  # the customer's question is no ground
        ("Sorry, the red kettle is currently unavailable.", "is the red kettle available"),
        ("Sadly they are sold out.", "the sandals"),
    ]:
        verdict = check_reply(reply, faq, message)
        assert not verdict.ok and any("stock" in r for r in verdict.reasons), (reply, verdict.reasons)
    for reply in (
        "If it's sold out, click \"Notify me\" and we'll e-mail you as soon as it's back in stock.",
        'Stock levels are shown on the product page; when it\'s sold out, click "Notify me".',
    ):
        assert check_reply(reply, faq, "is the TV in stock").ok, reply  # a conditional states no stock
    assert check_reply("Express delivery is available for most items.", FAQ["shipping_info"], "express?").ok
    assert check_reply("Sorry, it's available", faq, "x").ok  # streamed: "available for ..." may follow


def test_dates_names_and_contacts_from_the_customer_may_be_repeated():
    faq = FAQ["order_status"]
    customer = ["Hi, I'm Priya. I ordered on 3 May and it was due Tuesday", "my email is priya@example.com"]
    reply = "Sorry Priya! If it was due Tuesday, please send us your order number and we'll look into it."
    assert check_reply(reply, faq, customer).ok
    assert check_reply("We'll e-mail the tracking link to priya@example.com.", faq, customer).ok
    assert not check_reply("Sorry! It should arrive on Wednesday.", faq, customer).ok
    assert not check_reply("Your order from 4 May is on its way.", faq, customer).ok


def test_the_decision_is_respected():
    oos = "Sorry, I can only help with orders, deliveries, returns, payments and your account."
    assert check_reply(oos, oos, "what's the weather", out_of_scope=True).ok
    assert not check_reply("It will be sunny with light clouds.", oos, "what's the weather", out_of_scope=True).ok
    handoff = FAQ["human_agent"]
    reply = "Sure, I'll pass you on to our team - please stay in this chat."
    assert check_reply(reply, handoff, "human", handoff=True).ok
    assert not check_reply("No agents are available, but I can help.", handoff, "human", handoff=True).ok


@pytest.mark.parametrize(
    ("reply", "reason"),
    [("", "empty"), ("   \n ", "empty"), ("Thanks for chatting with us! " * 30, "too long"),
     ("Customer: bye\nReply: Thanks for chatting with us!", "prompt echo")],
)  # fmt: skip
def test_empty_long_and_echoed_replies_fall_back(reply, reason):
    verdict = check_reply(reply, FAQ["goodbye"], "bye")
    assert not verdict.ok and verdict.reasons[0].startswith(reason)


def test_the_guard_is_fast():
    cases = [(FAQ[i], m, r) for i, m, r in MUST_PASS] + [(FAQ[i], m, r) for i, m, r, _ in MUST_FALL_BACK]
    start = time.perf_counter()
    for n in range(5):
        for faq, message, reply in cases:
            check_reply(f"{reply} ({n})", faq, f"{message} {n}")  # fresh strings: no cache hits
    per_reply = (time.perf_counter() - start) / (5 * len(cases))
    assert per_reply < 0.005, f"{per_reply * 1000:.2f} ms per reply"  # ~0.5 ms measured on 2 shared cores


def _eval_rows() -> list[dict]:
    return [json.loads(line) for line in EVAL_SET.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_reply_eval_set_covers_every_intent():
    rows = _eval_rows()
    assert all(set(row) == {"text", "intent"} and row["text"].strip() for row in rows)
    counts = Counter(row["intent"] for row in rows)
    assert set(counts) == set(intents.INTENTS)
    assert min(counts.values()) >= 8 and len(rows) >= 120
    assert len({row["text"].lower() for row in rows}) == len(rows)


def test_reply_eval_set_is_disjoint_from_the_training_data():
    data = ROOT / "fmhub" / "data" / "customer_service"
    known = [row["text"].lower() for path in sorted(data.glob("*.jsonl")) for row in intents.read_jsonl(path)]
    matcher = difflib.SequenceMatcher(autojunk=False)
    close = []
    for row in _eval_rows():
        matcher.set_seq2(row["text"].lower())  # SequenceMatcher caches the second sequence
        for text in known:
            matcher.set_seq1(text)
            if matcher.real_quick_ratio() > 0.9 and matcher.quick_ratio() > 0.9 and matcher.ratio() > 0.9:
                close.append((row["text"], text))
    assert not close
