"""A long-ticket evaluation set: banking77 test queries inside realistic support emails.

    python -m bench.long_tickets [--data-root ../shared/data] [--rows 1200] [--seed 13] [--out runs/long-tickets.csv]
                                 [--tokenizer runs/bench-oos/banking77/model]

banking77's queries are one or two sentences; a support email wraps the question in a greeting, context, a sign-off,
a signature (name, phone numbers, sometimes a legal disclaimer or "Sent from my iPhone") and often the quoted
earlier thread. Each row here places one test query inside 150-400 tokens of such email text (the query's own
tokens not counted), with a quoted earlier message on another topic: another test query of a different intent,
with filler, sometimes inside a support agent's reply. The query sits at the start, in the middle or at the end of
the whole text, a third of the rows each:

    start   greeting, the query, more context, sign-off and signature, then the quoted thread (top-posting)
    middle  context before and after the query in about equal measure; the thread below or above the reply
    end     the quoted thread and context first (bottom-posting), the query last before the sign-off

`long_tickets` is a pure function (queries, seed and a token counter in; rows out); the command writes a CSV
(text, category, position, quoted_category, query) under runs/, never into the repository: the set is rebuilt from the
seed whenever it is needed. Tokens are counted by `count` (the command: a Hugging Face tokenizer when given,
else words and punctuation marks, which is close to a WordPiece count for plain English).
"""
from __future__ import annotations

import random
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from textclf.core import paths
from textclf.core.errors import UserError
from textclf.core.options import option, run

POSITIONS = ("start", "middle", "end")
EMAIL_TOKENS = (150, 400)  # the email text around a query, in tokens (the query's own not counted)
MIDDLE = (0.3, 0.7)  # a query in the middle starts within this share of the text's tokens

GREETINGS = ["Hi,", "Hello,", "Hi there,", "Hello team,", "Hi team,", "Dear Sir or Madam,", "Good morning,",
             "Good afternoon,", "Hey,", "Hello support,", "To whom it may concern,", "Dear customer service team,",
             "Hi {agent},", "Dear {agent},", "Morning,", "Evening all,"]
OPENERS = ["I hope you're well.", "Sorry to bother you again.", "I hope this is the right address for this.",
           "Hope you are having a good week.", "Thanks for getting back to me so quickly last time.",
           "I'm writing on behalf of my mother, who banks with you.", "First of all, thanks for your help so far.",
           "I hope someone can help me with this."]
LEAD_INS = ["", "", "", "", "Quick question: ", "My question is this: ", "The reason I'm writing: ", "So, ",
            "Basically, ", "Anyway, ", "Here is my problem: ", "I need some help. "]
# Context: the customer's circumstances, never what the question is about (a sentence naming a card or a transfer
# would be a second query, and the set would measure something else).
CONTEXT = [
    "I've been a customer for about {years} years and I've never had to contact you before.",
    "I'm currently travelling in {city} for work and only have my phone with me.",
    "I tried the chat in the app first, but nobody answered after half an hour.",
    "I looked through the help pages but couldn't find anything that matched my situation.",
    "This is quite urgent for me, as I'm moving house at the end of the month.",
    "My colleague {name} recommended you, and until now everything has been great.",
    "I'm not very good with technology, so please bear with me if I get the terms wrong.",
    "I'd really appreciate a quick reply, even if it's just to say you're looking into it.",
    "Please let me know if you need any more details from me.",
    "I can send screenshots if that helps.",
    "Apologies for the long email, I wanted to give you the whole picture.",
    "I work night shifts, so email is easier for me than calling during the day.",
    "I did call the helpline yesterday, but I was on hold for forty minutes and then got cut off.",
    "My partner and I both use the app, and we have been very happy with it so far.",
    "I'm a student and this is my first bank account, so some of this is new to me.",
    "It's the first time something like this has happened to me.",
    "I've already restarted my phone and reinstalled the app, just in case.",
    "My reference number from the last conversation was {ref}, if that helps.",
    "I'm usually reachable on my mobile between {hour} and {hour2}.",
    "We're self-employed, so I need to keep on top of our finances.",
    "I've read your terms and conditions but they're not very clear on this point.",
    "I'm on holiday until the {day}th, so I'd prefer to sort this out by email.",
    "To be honest I'm a bit frustrated, but I'm sure it's just a misunderstanding.",
    "My English is not perfect, sorry for any mistakes.",
    "I'm writing from my work address because I can't access my personal email right now.",
    "Thanks in advance for looking into this.",
    "I'd rather not visit a branch if it can be avoided, as the nearest one is an hour away.",
    "My account is in my name only.",
    "I updated the app to the latest version this morning.",
    "I've attached nothing to this email for security reasons, but I can share details over the phone.",
    "My daughter helped me set up everything on my phone last year.",
    "I'm asking now so that I don't have problems later.",
    "I know you must get a lot of emails, so thank you for your patience.",
    "Everything else on the account seems to be working fine.",
    "I would also like to say that your staff were very friendly the last time I called.",
    "I'm based in {city} at the moment, in case the time difference matters.",
]
CLOSERS = ["Looking forward to hearing from you.", "Thanks for your help.", "Speak soon.",
           "I'll keep an eye on my inbox.", "Any help is much appreciated.", "Have a nice day."]
SIGN_OFFS = ["Thanks,", "Thank you,", "Kind regards,", "Best regards,", "Best,", "Cheers,", "Regards,",
             "Many thanks,", "All the best,", "Thanks again,", "Warm regards,", "Sincerely,"]
FIRST = ["Anna", "James", "Priya", "Tom", "Sofia", "Mohammed", "Chloe", "Daniel", "Aisha", "Lukas", "Emily",
         "Oliver", "Maria", "Kenji", "Fatima", "Jack", "Olga", "Mateo", "Grace", "Wei", "Hannah", "Samuel",
         "Zara", "Patrick", "Ines", "Tariq", "Lucy", "Niamh", "Rafael", "Ewa"]
LAST = ["Smith", "Patel", "Nowak", "Garcia", "O'Brien", "Müller", "Kowalski", "Jones", "Rossi", "Nguyen",
        "Okafor", "Dubois", "Andersson", "Khan", "Murphy", "Silva", "Schmidt", "Taylor", "Haddad", "Ivanova"]
AGENTS = ["Sam", "Alex", "Jordan", "Chris", "Robin", "Taylor", "Jamie", "Morgan"]
CITIES = ["Lisbon", "Berlin", "Manchester", "Dublin", "Warsaw", "Barcelona", "Toronto", "Singapore", "Leeds",
          "Amsterdam", "Milan", "Glasgow"]
TITLES = ["Office Manager", "Freelance Designer", "Senior Software Engineer", "Head of Operations", "Nurse",
          "Teacher", "Sales Director", "Accountant", "Project Coordinator", "PhD Candidate"]
COMPANIES = ["Brightline Logistics Ltd", "Northwind Consulting", "Acorn & Finch LLP", "Bluewater Studios",
             "Kestrel Health Partners", "Meridian Retail Group", "Oakfield Primary School", "Foxglove Architects"]
DOMAINS = ["gmail.com", "outlook.com", "yahoo.co.uk", "icloud.com", "proton.me", "hotmail.com"]
PHONES = ["+44 7700 900{d3}", "07700 900 {d3}", "+353 87 {d3} {d4}", "+49 151 {d4}{d3}", "(555) 01{d1}-{d4}",
          "+1 415 555 0{d3}", "+48 600 {d3} {d3b}"]
PHONE_LABELS = ["", "Tel: ", "Mob: ", "Mobile: ", "Phone: ", "M: ", "T: "]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
DISCLAIMERS = [
    "This email and any files transmitted with it are confidential and intended solely for the use of the "
    "individual or entity to whom they are addressed. If you have received this email in error please notify the "
    "sender immediately and delete it from your system. Any views or opinions presented are solely those of the "
    "author and do not necessarily represent those of the company.",
    "CONFIDENTIALITY NOTICE: The contents of this message, including any attachments, are confidential and may "
    "be legally privileged. If you are not the intended recipient, you must not read, copy, distribute or act in "
    "reliance on it. {company} is registered in England and Wales, company number {ref}.",
    "Please consider the environment before printing this email.",
    "The information in this email is confidential and may be legally privileged. It is intended solely for the "
    "addressee. Access to this email by anyone else is unauthorised. {company} accepts no liability for any damage "
    "caused by any virus transmitted by this email.",
    "This message has been scanned for viruses and dangerous content and is believed to be clean. "
    "Registered office: {number} High Street, {city}.",
]
MOBILE_FOOTERS = ["Sent from my iPhone", "Sent from my Samsung Galaxy smartphone.", "Sent from Outlook for Android",
                  "Get Outlook for iOS"]
AGENT_LINES = ["Thanks for getting in touch with us.", "I'm sorry to hear about the trouble you've had.",
               "I've had a look at your account and added a note for the team.",
               "Is there anything else I can help you with today?",
               "If you have any other questions, just reply to this email.",
               "Our team is available 24/7 in the app if you need us sooner.",
               "Please don't share your full card number or PIN by email."]
SUBJECTS = ["Question about my account", "Help please", "Re: your enquiry", "Urgent", "Follow-up", "Account query",
            "Re: Re: support request", "(no subject)", "Problem", "Quick question"]


@dataclass(frozen=True)
class Ticket:
    text: str
    category: str
    position: str  # where the query sits in the whole text: start, middle or end
    quoted_category: str  # the intent of the quoted earlier message (always another one)
    query: str  # the banking77 query alone, as in the test split


QUOTE_HEADER = re.compile(r"^(On .* wrote:|-----Original Message-----|(From|Sent|To|Subject): .*)$")


def without_quotes(text: str) -> str:
    """The email without its quoted thread: lines quoted with '>' and the headers that introduce them, as a mail
    client's "hide quoted text" does (what a sender could strip before classifying; the benchmark's reference)."""
    kept = [line for line in text.split("\n") if not line.startswith(">") and not QUOTE_HEADER.match(line)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def count_words(text: str) -> int:
    """Words and punctuation marks: the default token count."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def long_tickets(queries: pd.DataFrame, rows: int, seed: int, count: Callable[[str], int] = count_words,
                 tokens: tuple[int, int] = EMAIL_TOKENS) -> list[Ticket]:
    """`rows` tickets built from `queries` (columns text, category; each query used once at most), a third at each
    position (shuffled), each with `tokens` of email text around its query by `count`."""
    categories = queries["category"].nunique()
    if categories < 2:
        raise ValueError("long_tickets needs queries of at least two categories (the quoted message is another one)")
    if not 0 < rows <= len(queries):
        raise ValueError(f"rows must be from 1 to the {len(queries)} queries, got {rows}")
    rng = random.Random(seed)
    picked = rng.sample(range(len(queries)), rows)
    positions = [POSITIONS[i % len(POSITIONS)] for i in range(rows)]
    rng.shuffle(positions)
    texts, cats = queries["text"].tolist(), queries["category"].tolist()
    out = []
    for i, position in zip(picked, positions, strict=True):
        other = rng.randrange(len(queries))
        while cats[other] == cats[i]:
            other = rng.randrange(len(queries))
        target = rng.randint(*tokens)
        out.append(Ticket(_email(rng, texts[i], texts[other], position, target, count, tokens), cats[i], position,
                          cats[other], texts[i]))
    return out


# ---------------------------------------------------------------- one email

def _fill(rng: random.Random, template: str, person: dict) -> str:
    return template.format(
        name=f"{rng.choice(FIRST)}", agent=person["agent"], city=rng.choice(CITIES), years=rng.randint(2, 15),
        ref=f"{rng.randint(10_000_000, 99_999_999)}", hour=f"{rng.randint(8, 11)}am", hour2=f"{rng.randint(2, 6)}pm",
        day=rng.randint(4, 28), company=person["company"], number=rng.randint(1, 250))


def _person(rng: random.Random) -> dict:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    digits = {"d1": rng.randint(0, 9), "d3": f"{rng.randint(0, 999):03d}", "d3b": f"{rng.randint(0, 999):03d}",
              "d4": f"{rng.randint(0, 9999):04d}"}
    email = f"{first.lower()}.{re.sub(r'[^a-z]', '', last.lower())}@{rng.choice(DOMAINS)}"
    return {"first": first, "last": last, "email": email, "phone": rng.choice(PHONES).format(**digits),
            "company": rng.choice(COMPANIES), "agent": rng.choice(AGENTS)}


def _signature(rng: random.Random, person: dict, long: bool) -> str:
    """Sign-off, name and what follows it; `long`: maybe a job title, company, phone, address and disclaimer."""
    lines = [rng.choice(SIGN_OFFS), rng.choice([person["first"], f"{person['first']} {person['last']}"])]
    if long and rng.random() < 0.6:
        lines += [rng.choice(TITLES), person["company"]]
    if rng.random() < 0.7:
        lines.append(rng.choice(PHONE_LABELS) + person["phone"])
    if long and rng.random() < 0.4:
        lines.append(person["email"])
    if rng.random() < 0.2:
        lines += ["", rng.choice(MOBILE_FOOTERS)]
    elif long and rng.random() < 0.5:
        lines += ["", _fill(rng, rng.choice(DISCLAIMERS), person)]
    return "\n".join(lines)


def _quote_header(rng: random.Random, sender: dict) -> str:
    day, month, hour = rng.randint(1, 28), rng.choice(MONTHS), f"{rng.randint(7, 22):02d}:{rng.randint(0, 59):02d}"
    name = f"{sender['first']} {sender['last']}"
    return rng.choice([
        f"On {rng.choice(DAYS)}, {day} {month}, {name} wrote:",
        f"On {rng.choice(DAYS)} {day} {month} 2024 at {hour}, {name} <{sender['email']}> wrote:",
        f"On {day}/{MONTHS.index(month) + 1:02d}/2024 {hour}, {sender['email']} wrote:",
        f"-----Original Message-----\nFrom: {name} <{sender['email']}>\nSent: {rng.choice(DAYS)} {day} {month} 2024 "
        f"{hour}\nTo: Support\nSubject: {rng.choice(SUBJECTS)}",
    ])


def _quoted(rng: random.Random, person: dict, other_query: str, filler: list[str]) -> str:
    """The earlier message, quoted with '> ': the customer's own, or a support agent's reply that quotes it."""
    earlier = "\n\n".join([rng.choice(GREETINGS[:12]), " ".join([other_query, *filler]),
                           f"{rng.choice(SIGN_OFFS)}\n{person['first']}"])
    if rng.random() < 0.35:  # the agent replied, quoting the customer
        agent = {"first": person["agent"], "last": "from Support", "email": "support@bank.example"}
        reply = "\n\n".join([f"Hi {person['first']},", " ".join(rng.sample(AGENT_LINES, rng.randint(2, 4))),
                             f"Best wishes,\n{person['agent']} | Customer Support"])
        earlier = reply + "\n\n" + _quote_header(rng, person) + "\n" + _prefix(earlier)
        return _quote_header(rng, agent) + "\n" + _prefix(earlier)
    return _quote_header(rng, person) + "\n" + _prefix(earlier)


def _prefix(text: str) -> str:
    return "\n".join(">" if not line else f"> {line}" if not line.startswith(">") else f">{line}"
                     for line in text.split("\n"))


def _paragraphs(sentences: list[str], sizes: list[int]) -> list[str]:
    """Sentences grouped into paragraphs of the given sizes, in turn."""
    out, i = [], 0
    for n in sizes:
        if i >= len(sentences):
            break
        out.append(" ".join(sentences[i: i + n]))
        i += n
    return out


class _Email:
    """One email being filled: every choice drawn once, up front, so that it can be rendered again after each
    sentence of filler is added (the quote's own choices come from a seed of their own, for the same reason)."""

    def __init__(self, rng: random.Random, query: str, other_query: str, position: str):
        self.person = person = _person(rng)
        self.greeting = _fill(rng, rng.choice(GREETINGS), person)
        self.opener = rng.choice(OPENERS) if rng.random() < 0.4 else None
        lead_in = rng.choice(LEAD_INS)
        self.asked = lead_in + (query[:1].lower() + query[1:] if lead_in.endswith(", ") else query)
        self.other_query = other_query
        self.closer = rng.choice(CLOSERS) if position != "end" and rng.random() < 0.6 else None
        # A query at the end is followed by a sign-off and a short signature at most, seldom a disclaimer.
        self.signature = _signature(rng, person, long=position != "end" or rng.random() < 0.15)
        # Bottom-posting (the thread above the reply) for a query at the end; either way for one in the middle.
        self.quote_first = position == "end" or (position == "middle" and rng.random() < 0.5)
        self.quote_seed = rng.random()
        self.sizes = [rng.randint(1, 3) for _ in range(len(CONTEXT))]
        self.slots = {"before": [], "after": [], "quote": []}

    def parts(self) -> tuple[str, str]:
        """(the text up to the query, the text after it)."""
        before = [self.greeting, *([self.opener] if self.opener else []), *_paragraphs(self.slots["before"], self.sizes)]
        after = [*_paragraphs(self.slots["after"], self.sizes), *([self.closer] if self.closer else []), self.signature]
        quote = _quoted(random.Random(self.quote_seed), self.person, self.other_query, self.slots["quote"])
        before, after = ([quote, *before], after) if self.quote_first else (before, [*after, quote])
        return "\n\n".join(before) + "\n\n", "\n\n" + "\n\n".join(after)

    def text(self) -> str:
        head, tail = self.parts()
        return head + self.asked + tail


def _email(rng: random.Random, query: str, other_query: str, position: str, target: int,
           count: Callable[[str], int], tokens: tuple[int, int]) -> str:
    """An email around `query` with `target` tokens of its own (within `tokens`), filler added a sentence at a time
    where the position allows: after a query at the start, before one at the end, on the lighter side of one in
    the middle; the quoted message takes its share."""
    email = _Email(rng, query, other_query, position)
    query_tokens = count(query)
    for sentence in (_fill(rng, s, email.person) for s in rng.sample(CONTEXT, len(CONTEXT))):
        head, tail = email.parts()
        before, after = count(head), count(tail)
        centred = position != "middle" or MIDDLE[0] <= before / (before + after) <= MIDDLE[1]
        if count(email.text()) - query_tokens >= target and centred:
            break
        if position == "middle":  # the lighter side, in its body or in the quote when the quote is on that side
            side = "before" if before <= after else "after"
            on_quote_side = (side == "before") == email.quote_first
            slot = "quote" if on_quote_side and rng.random() < 0.4 else side
        else:
            slot = rng.choice(["after", "quote"] if position == "start" else ["before", "quote"])
        email.slots[slot].append(sentence)
        if count(email.text()) - query_tokens > tokens[1]:  # one sentence too many: undo it and stop
            email.slots[slot].pop()
            break
    return email.text()


# ---------------------------------------------------------------- command

@dataclass
class LongTicketsConfig:
    """Write the long-ticket evaluation set (banking77 test queries inside support emails) to a CSV."""

    data_root: Path = option("folder holding the datasets", paths.ROOT.parent / "shared" / "data")
    rows: int = option("tickets to write, a third at each position", 1200)
    seed: int = option("seed: the same seed writes the same set", 13)
    out: Path = option("CSV to write (under runs/: the set is rebuilt from its seed, never committed)",
                       paths.ROOT / "runs" / "long-tickets.csv")
    tokenizer: str | None = option("count tokens with this Hugging Face tokenizer (a model folder); default: words "
                                   "and punctuation marks", None)

    def __post_init__(self):
        if self.rows < 1:
            raise UserError(f"--rows must be at least 1, got {self.rows}")


def banking77_test(data_root: Path) -> pd.DataFrame:
    """banking77's test split (text, category); one clear line when the data is not there."""
    path = Path(data_root) / "banking77" / "test.csv"
    if not path.is_file():
        raise UserError(f"{path} not found: the long-ticket set is built from banking77's test split in ../shared/data")
    return pd.read_csv(path)


def token_counter(tokenizer: str | None) -> Callable[[str], int]:
    if tokenizer is None:
        return count_words
    from transformers import AutoTokenizer  # imported here: the default count needs no model

    tok = AutoTokenizer.from_pretrained(tokenizer)
    return lambda text: len(tok(text, add_special_tokens=False, verbose=False)["input_ids"])


def main(config: LongTicketsConfig) -> Path:
    tickets = long_tickets(banking77_test(config.data_root), config.rows, config.seed, token_counter(config.tokenizer))
    config.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([asdict(t) for t in tickets]).to_csv(config.out, index=False)
    return config.out


def command(argv=None, prog="python -m bench.long_tickets") -> int:
    return run(main, LongTicketsConfig, argv, prog=prog, show=lambda path: f"wrote {path}")


if __name__ == "__main__":
    sys.exit(command())
