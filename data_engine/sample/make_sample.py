"""Writes the bundled sample dataset: chat fine-tuning rows in five files and four formats, with
defects planted at seeded random positions, and `expected.json` saying what the engine must
do with each planted row (computed from the rows as written, not counted by hand).

    python -m data_engine.sample.make_sample [--out DIR] [--rows-scale K] [--seed N]
    python -m data_engine.sample.make_sample --check [--out DIR]   # verify written files

Every defective row has exactly one defect, so its reason is unambiguous (README.md: planted
defects). `--check` reads and cleans the written files with the engine itself, as demo.yaml
configures it, and compares the engine's reasons, duplicates and repairs with expected.json.
`--rows-scale K` writes K blocks per file; clean rows of later blocks get varied prompts
(lead-ins, dates, numbers) so that every clean row stays unique. Generation needs only the
stdlib, pyarrow, and the engine's format reader and token estimate.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import random
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data_engine.readers.formats import to_messages
from data_engine.sample import texts as T
from data_engine.sample import titles_en as TE

HERE = Path(__file__).resolve().parent
DEFAULT_OUT, README = HERE / "data", HERE / "README.md"
FILES = {"titles_ja.jsonl": "messages", "instructions_en.jsonl": "sharegpt",
         "arithmetic_zh.parquet": "alpaca", "mixed_formats.jsonl": "mixed",
         "titles_en.jsonl": "messages"}
ID_PREFIX = {"titles_ja.jsonl": "ja", "titles_en.jsonl": "en"}  # files whose rows carry ids
QA_FILE = "mixed_formats.jsonl"  # read with demo.yaml's column mapping:
QA_COLUMNS = {"user": "question", "assistant": "answer"}
FULLWIDTH = {c: c + 0xFEE0 for c in range(0x21, 0x7F) if chr(c).isalnum()}
EN_SWAPS = {"usually": "often", "often": "frequently", "quickly": "fast", "great": "good",
            "very": "really", "for example": "for instance"}  # near duplicates: stay grammatical
EN_SWAP = re.compile(r"\b(" + "|".join(EN_SWAPS) + r")\b", re.IGNORECASE)
KANA, HAN = re.compile("[\u3040-\u30ff]"), re.compile("[\u4e00-\u9fff]")  # sanity checks
SPACES = re.compile(r"\s+")


@dataclass(eq=False)
class Row:
    """One row to write, with what the engine must do with it."""

    file: str
    obj: dict | None = None  # the JSON object or Parquet row
    raw: str | None = None  # a line written as is (malformed JSON)
    reason: str | None = None  # the planted rejection reason
    kind: str = "clean"  # clean | exact | near (planted duplicates)
    src: Row | None = None  # the original of a planted duplicate
    repair: tuple[str, str] | None = None  # (mojibake | width, expected assistant text)
    has_id: bool = False
    used: bool = False  # already the original of a planted duplicate
    line: int = 0


# --- identity of a conversation (for unique rows and exact duplicates) ---------------------

def canonical(text: str | None) -> str:
    """``text`` as the engine's exact dedup compares it: NFKC, whitespace runs to one space,
    trimmed (so `Ｔｏｋｙｏ  tower` and `Tokyo tower` are one text)."""
    return SPACES.sub(" ", unicodedata.normalize("NFKC", text or "")).strip()


def conversation(messages: list[dict]) -> str:
    """Identity of a conversation as the engine's exact dedup sees it: roles, canonical texts,
    tool calls."""
    return json.dumps([(m["role"], canonical(m["content"]), m["tool_calls"] or "")
                       for m in messages], ensure_ascii=False)


def key(obj: dict, file: str) -> str:
    """Identity of a clean row, read by the engine's format reader as demo.yaml configures it."""
    return conversation(to_messages(obj, "auto", QA_COLUMNS if file == QA_FILE else None))


# --- building rows -----------------------------------------------------------------------

def msgs(pairs) -> list[dict]:
    """OpenAI messages from (role, content) pairs."""
    return [{"role": r, "content": c} for r, c in pairs]


def sharegpt(pairs) -> dict:
    """A ShareGPT row from (role, content) pairs."""
    names = {"user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names.get(r, r), "value": c} for r, c in pairs]}


def unique(seen: set, blk: int, make) -> Row:
    """A clean row unlike every row so far. ``make(level)`` varies it (0: as written, 1: lead-in
    or date, 2: also a number) when a later block or a clash asks for it."""
    for attempt in range(60):
        row = make(0 if blk == 0 and attempt == 0 else 1 if attempt < 30 else 2)
        if (k := key(row.obj, row.file)) not in seen:
            seen.add(k)
            return row
    raise RuntimeError(f"{row.file}: no unique variant left")


def lead(g: random.Random, level: int, text: str, ja: bool = False) -> str:
    """``text`` varied for ``unique``: a lead-in (level 1), also a question number (level 2)."""
    if not level:
        return text
    if ja:
        number = f"質問{g.randint(100, 99999)}：" if level == 2 else ""
        return number + g.choice(T.JA_QA_LEADS) + text
    number = f"Question {g.randint(100, 99999)}: " if level == 2 else ""
    return f"{number}{' '.join(g.sample(T.EN_LEADS, g.randint(1, 2)))} {text}"


def edit(text: str, lang: str, g: random.Random) -> str:
    """A one-character or one-word edit: a planted near duplicate."""
    if lang == "zh":
        i = text.rfind("？")
        return text[:i] + "呢" + text[i:]
    if lang == "ja":
        i = text.rfind("、") if g.random() < 0.5 else -1
        return text[:i] + text[i + 1:] if i > 0 else text[::-1].replace("。", "！", 1)[::-1]
    if m := EN_SWAP.search(text):
        word = EN_SWAPS[m.group().lower()]
        word = word[0].upper() + word[1:] if m.group()[0].isupper() else word
        return text[:m.start()] + word + text[m.end():]
    return text[:-1] + "!" if text.endswith(".") else text + "!"


def too_long(head: str, parts) -> str:
    """``head``, a blank line, then ``parts`` one a line until the engine's token estimate
    passes 2300: the user turn of a too_long row."""
    from data_engine.filters.length import estimate_tokens

    text = head + "\n"
    for part in parts:
        text += "\n" + part
        if estimate_tokens(text) > 2300:
            break
    return text


def pick(g: random.Random, rows: list[Row], n: int, ok=lambda r: True) -> list[Row]:
    """n clean rows, not yet the original of a planted duplicate."""
    chosen = g.sample([r for r in rows if r.kind == "clean" and not (r.reason or r.repair or r.used)
                       and ok(r)], n)
    for r in chosen:
        r.used = True
    return chosen


def exact(src: Row, file: str | None = None, obj: dict | None = None, **kw) -> Row:
    """A planted exact duplicate of ``src``, in another file or shape when given."""
    return Row(file or src.file, obj or copy.deepcopy(src.obj), kind="exact", src=src, **kw)


def near(seen: set, src: Row, mutate) -> Row:
    """A planted near duplicate: a copy of ``src`` that ``mutate`` edits in place."""
    row = Row(src.file, copy.deepcopy(src.obj), kind="near", src=src, has_id=src.has_id)
    mutate(row.obj)
    assert (k := key(row.obj, row.file)) not in seen, "a near duplicate must differ from every row"
    seen.add(k)
    return row


def gen_titles(g: random.Random, blk: int, seen: set, prior: dict):
    """One block of titles_ja.jsonl: (rows, duplicates to place after their originals)."""
    F = "titles_ja.jsonl"
    entries = [(t, ex, title) for t, d in T.JA_TOPICS.items() for ex, title in d["entries"]]
    g.shuffle(entries)
    pool = iter([e for e in entries if e[2] not in T.JA_FULLWIDTH_TITLES])
    wide = [e for e in entries if e[2] in T.JA_FULLWIDTH_TITLES]

    def conv(ex, reply, level=0):
        date = "（{}年{}月{}日公開）\n".format(g.randint(2019, 2025), g.randint(1, 12),
                                              g.randint(1, 28)) if level else ""
        number = f"（記事番号{g.randint(100, 99999)}）\n" if level == 2 else ""
        head = [("system", g.choice(T.JA_SYSTEM))] if g.random() < 0.6 else []
        user = f"{g.choice(T.JA_ASK)}\n\n{number}{date}{ex}"
        return head + [("user", user), ("assistant", reply)]

    def row(topic, pairs, **kw):
        return Row(F, {"messages": msgs(pairs), "tags": [topic]}, has_id=g.random() < 0.85, **kw)

    base = []
    for topic, ex, title in [next(pool) for _ in range(80)] + wide:
        reply = title.translate(FULLWIDTH) if title in T.JA_FULLWIDTH_TITLES else title
        base.append(unique(seen, blk, lambda lv: row(topic, conv(ex, reply, lv))))
        base[-1].repair = ("width", title) if reply != title else None
    for _ in range(42):  # the story: 28% of a title dataset were keyword lists
        topic, ex, _ = next(pool)
        style = g.choice(["｜", " | ", "#", "・", "、", "/"])
        words = g.sample(T.JA_TOPICS[topic]["keywords"],
                         g.randint(3, 5) if style in ("｜", " | ", "#") else g.randint(4, 6))
        tags = " ".join("#" + w for w in words) if style == "#" else style.join(words)
        base.append(row(topic, conv(ex, tags), reason="tag_list"))
    for reason, pattern in [("degenerate_repetition", p) for p in (
            "」" * 8, "{}" + "」" * 12, "{}ですですですです", T.JA_DEFECTS["thanks"], "{}" + "！" * 6,
            "{}まとめまとめまとめ")] + [("special_token_literal", "{}<|im_end|>"),
                                     ("special_token_literal", "<|im_start|>assistant\n{}"),
                                     ("empty_turn", " "), ("too_short", "…"),
                                     ("wrong_language", T.WRONG_LANGUAGE["ko"])]:
        topic, ex, title = next(pool)
        base.append(row(topic, conv(ex, pattern.format(title)), reason=reason))
    (t1, ex1, ti1), (t2, ex2, _), (t3, ex3, ti3), (t4, ex4, ti4), (t5, ex5, ti5) = \
        [next(pool) for _ in range(5)]
    ask, system = T.JA_ASK[0], T.JA_SYSTEM[0]
    digest = too_long(T.JA_DEFECTS["long_ask"], (f"【{topic}】{ex}" for topic, ex, _ in entries))
    base += [
        row(t1, [("user", f"{ask}\n\n{ex1}"), ("system", system), ("assistant", ti1)],
            reason="bad_role_order"),
        row(t2, [("system", system), ("user", f"{ask}\n\n{ex2}")], reason="no_assistant_reply"),
        row(t3, [("user", f"{T.JA_ASK[1]}\n\n{ex3}")], reason="no_assistant_reply"),
        row("特集", [("user", digest), ("assistant", T.JA_DEFECTS["long_reply"])], reason="too_long"),
        Row(F, raw=json.dumps({"messages": msgs(conv(ex4, ti4)), "tags": [t4]},
                              ensure_ascii=False)[:150], reason="malformed_json"),
        Row(F, raw=json.dumps(f"タイトル案：{ti3}", ensure_ascii=False), reason="malformed_json"),
        Row(F, {"text": ex5, "title": ti5, "tags": [t5]}, reason="unknown_format")]
    derived = []
    ids = [(True, True), (True, False), (False, True)]  # (original has an id, duplicate has one)
    for src, (had_id, has_id) in zip(pick(g, base, 3), ids):
        src.has_id = had_id
        derived.append(exact(src, has_id=has_id))
    for src in pick(g, base, 4):
        derived.append(near(seen, src, lambda obj: obj["messages"][-2].update(
            content=edit(obj["messages"][-2]["content"], "ja", g))))
    return base, derived


def gen_instructions(g: random.Random, blk: int, seen: set, prior: dict):
    """One block of instructions_en.jsonl, as gen_titles."""
    F, D = "instructions_en.jsonl", T.EN_DEFECTS
    qa = g.sample(T.EN_QA, len(T.EN_QA))

    def row(pairs, **kw):
        return Row(F, sharegpt(pairs), **kw)

    def clean(pairs, level):
        head = [("system", g.choice(T.EN_SYSTEM))] if g.random() < 0.3 else []
        return row(head + [("user", lead(g, level, pairs[0][1]))] + pairs[1:])

    chats = [list(zip(("user", "assistant"), p)) for p in qa[:47]]
    chats += [list(zip(("user", "assistant", "user", "assistant"), p)) for p in T.EN_MULTI]
    base = [unique(seen, blk, lambda lv: clean(pairs, lv)) for pairs in chats]
    for q, a in T.EN_MOJIBAKE:  # UTF-8 read as cp1252: `don’t` -> `donâ€™t`
        bad = a.encode("utf-8").decode("cp1252")
        base.append(unique(seen, blk, lambda lv: clean([("user", q), ("assistant", bad)], lv)))
        base[-1].repair = ("mojibake", a)
    notes = too_long(D["long_ask"], (answer for _, answer in qa))
    pair = ("user", "assistant")
    base += [
        Row(F, raw=json.dumps(sharegpt(zip(pair, qa[47]))) + "}", reason="malformed_json"),
        Row(F, dict(D["unknown"]), reason="unknown_format"),
        row([("user", D["empty"]), ("assistant", "")], reason="empty_turn"),
        row(zip(("user", "user", "assistant"), D["two_users"]), reason="bad_role_order"),
        row(zip(("user", "assistant", "user"), D["no_reply"]), reason="no_assistant_reply"),
        *[row(zip(pair, D[k]), reason="special_token_literal") for k in ("eos", "inst")],
        *[row([("user", f"{T.EN_TAG_ASK}\n\n{ex}"), ("assistant", tags)], reason="tag_list")
          for ex, tags in T.EN_TAG_ROWS],
        *[row(zip(pair, D[k]), reason="degenerate_repetition") for k in ("the_the", "bangs")],
        row(zip(pair, D["short"]), reason="too_short"),
        row([("user", notes), ("assistant", D["long_reply"])], reason="too_long"),
        *[row(zip(pair, T.WRONG_LANGUAGE[k]), reason="wrong_language") for k in ("de", "fr")]]
    derived = [exact(src) for src in pick(g, base, 1)]
    for src in pick(g, base, 2):
        derived.append(near(seen, src, lambda obj: obj["conversations"][-1].update(
            value=edit(obj["conversations"][-1]["value"], "en", g))))
    return base, derived


def gen_arithmetic(g: random.Random, blk: int, seen: set, prior: dict):
    """One block of arithmetic_zh.parquet, as gen_titles."""
    F = "arithmetic_zh.parquet"
    order = [t for _ in range(2) for t in g.sample(T.ZH_TEMPLATES, len(T.ZH_TEMPLATES))]

    def problem(template):
        question, answer, kind = template
        (n, n2), (item, m) = g.sample(T.ZH_NAMES, 2), g.choice(T.ZH_ITEMS)
        values = T.zh_numbers(kind, g)
        slots = dict(n=n, n2=n2, item=item, m=m, **values)
        return question.format(**slots), answer.format(**slots), str(values["r"])

    def alpaca(question, output, level=0):
        question = f"第{g.randint(1, 9999)}题：{question}" if level == 2 else question
        if g.random() < 0.3:
            return {"instruction": g.choice(T.ZH_ASK), "input": question, "output": output}
        return {"instruction": question, "input": "", "output": output}

    base = [unique(seen, blk, lambda lv: Row(F, alpaca(*problem(t)[:2], lv))) for t in order[:54]]
    (q1, _, _), (q2, a2, _), (q3, _, r3) = [problem(t) for t in order[54:57]]
    base += [Row(F, alpaca(q1, ""), reason="empty_turn"),
             Row(F, alpaca(q2, a2 + "<|endoftext|>"), reason="special_token_literal"),
             Row(F, alpaca(q3, r3), reason="too_short"),
             Row(F, alpaca(*T.WRONG_LANGUAGE["es"]), reason="wrong_language")]
    derived = [exact(src) for src in pick(g, base, 1)]
    for src in pick(g, base, 1, lambda r: r.obj["input"]):  # longer rows: a clearer near duplicate
        derived.append(near(seen, src, lambda obj: obj.update(input=edit(obj["input"], "zh", g))))
    return base, derived


def tool_chat(g: random.Random, ask: str, name: str, args: dict, result: dict, reply: str,
              plain: str | None = None) -> dict:
    """user, an assistant tool call, the tool's result, the assistant's answer. ``plain``: the
    assistant says this instead of calling the tool (then the tool turn is out of order)."""
    call = f"call_{g.randrange(16 ** 6):06x}"
    calling = {"role": "assistant", "content": "", "tool_calls": [{"id": call, "type": "function",
               "function": {"name": name, "arguments": json.dumps(args)}}]}
    return {"messages": [{"role": "user", "content": ask},
                         {"role": "assistant", "content": plain} if plain else calling,
                         {"role": "tool", "tool_call_id": call, "content": json.dumps(result)},
                         {"role": "assistant", "content": reply}]}


def weather(g: random.Random, city: str, city_ja: str | None, level: int,
            plain: bool = False) -> dict:
    """A get_weather tool chat in English, or in Japanese when ``city_ja`` is given."""
    cond = g.choice(list(T.WEATHER))
    _, ask, reply, reply_ja = T.WEATHER[cond]
    t = g.randint(-4, 1) if cond == "snow" else g.randint(8, 31)
    if city_ja:
        ask = lead(g, level, g.choice(T.JA_WEATHER_ASK).format(city=city_ja), ja=True)
        reply = reply_ja.format(city=city_ja, t=t)
    else:
        ask, reply = lead(g, level, ask.format(city=city)), reply.format(city=city, t=t)
    result = {"city": city, "temperature_c": t, "condition": cond}
    return tool_chat(g, ask, "get_weather", {"city": city}, result, reply,
                     f"Let me check the forecast for {city}." if plain else None)


def currency(g: random.Random, level: int) -> dict:
    """A convert_currency tool chat (US dollars to yen)."""
    amount, rate = g.choice([50, 100, 200, 300, 500]), round(g.uniform(140, 160), 2)
    args = {"amount": amount, "from": "USD", "to": "JPY"}
    result = {**args, "rate": rate, "result": round(amount * rate, 2)}
    return tool_chat(g, lead(g, level, f"How much is {amount} US dollars in Japanese yen today?"),
                     "convert_currency", args, result,
                     f"At today's rate of {rate:.2f} yen per dollar, {amount} US dollars is about "
                     f"{round(amount * rate):,} yen.")


def gen_mixed(g: random.Random, blk: int, seen: set, prior: dict):
    """One block of mixed_formats.jsonl, as gen_titles; ``prior``: this block's earlier files."""
    F, D = QA_FILE, T.MIXED_DEFECTS
    base = [unique(seen, blk, lambda lv: Row(F, {"prompt": lead(g, lv, p), "completion": c}))
            for p, c in T.EN_PROMPT_COMPLETION]
    cities = g.sample(T.WEATHER_CITIES, len(T.WEATHER_CITIES))
    for en, ja in [c for c in cities if not c[1]][:3] + [c for c in cities if c[1]][:2]:
        base.append(unique(seen, blk, lambda lv: Row(F, weather(g, en, ja, lv))))
    base.append(unique(seen, blk, lambda lv: Row(F, currency(g, lv))))
    for pairs, ja in ((T.JA_QA, True), (T.EN_QA_COLUMNS, False)):
        base += [unique(seen, blk, lambda lv: Row(F, {"question": lead(g, lv, q, ja), "answer": a}))
                 for q, a in pairs]
    base += [Row(F, raw=D["malformed"], reason="malformed_json"),
             Row(F, dict(D["unknown"]), reason="unknown_format"),
             Row(F, dict(D["empty"]), reason="empty_turn"),
             Row(F, {"messages": D["bot"]}, reason="bad_role_order"),
             Row(F, weather(g, "Paris", None, 0, plain=True), reason="bad_role_order"),
             Row(F, {"messages": D["no_reply"]}, reason="no_assistant_reply")]
    (title,) = pick(g, prior["titles_ja.jsonl"], 1, lambda r: len(r.obj["messages"]) == 2)
    (chat,) = pick(g, prior["instructions_en.jsonl"], 1, lambda r: len(r.obj["conversations"]) == 2)
    user, reply = (m["content"] for m in title.obj["messages"])
    prompt, completion = (t["value"] for t in chat.obj["conversations"])
    derived = [exact(title, F, {"question": user, "answer": reply}),
               exact(chat, F, {"prompt": prompt, "completion": completion}),
               *[exact(src) for src in pick(g, base, 1, lambda r: "prompt" in r.obj)]]
    for src in pick(g, base, 1, lambda r: "question" in r.obj and KANA.search(r.obj["answer"])):
        derived.append(near(seen, src, lambda obj: obj.update(answer=edit(obj["answer"], "ja", g))))
    return base, derived


def gen_titles_en(g: random.Random, blk: int, seen: set, prior: dict):
    """One block of titles_en.jsonl, the English twin of gen_titles."""
    F, D = "titles_en.jsonl", TE.EN_TITLE_DEFECTS
    entries = [(t, ex, title) for t, d in TE.EN_TOPICS.items() for ex, title in d["entries"]]
    g.shuffle(entries)
    pool = iter([e for e in entries if e[2] not in TE.EN_TITLE_MOJIBAKE])
    mojibake = [e for e in entries if e[2] in TE.EN_TITLE_MOJIBAKE]

    def conv(ex, reply, level=0):
        date = "(Posted {}-{:02d}-{:02d})\n".format(g.randint(2019, 2025), g.randint(1, 12),
                                                   g.randint(1, 28)) if level else ""
        number = f"(Post #{g.randint(100, 99999)})\n" if level == 2 else ""
        head = [("system", g.choice(TE.EN_TITLE_SYSTEM))] if g.random() < 0.5 else []
        user = f"{g.choice(TE.EN_TITLE_ASK)}\n\n{number}{date}{ex}"
        return head + [("user", user), ("assistant", reply)]

    def row(topic, pairs, **kw):
        return Row(F, {"messages": msgs(pairs), "tags": [topic]}, has_id=g.random() < 0.85, **kw)

    base = []
    for topic, ex, title in [next(pool) for _ in range(86)] + mojibake:
        # UTF-8 read as cp1252: `Café` -> `CafÃ©`
        reply = title.encode("utf-8").decode("cp1252") if title in TE.EN_TITLE_MOJIBAKE else title
        base.append(unique(seen, blk, lambda lv: row(topic, conv(ex, reply, lv))))
        base[-1].repair = ("mojibake", title) if reply != title else None
    for _ in range(18):  # keyword lists where the title should be, as in the Japanese rows
        topic, ex, _ = next(pool)
        style = g.choice([", ", " | ", "#", " / ", "Title, "])
        words = g.sample(TE.EN_TOPICS[topic]["keywords"],
                         g.randint(3, 5) if style in (" | ", "#") else g.randint(4, 6))
        if style == "#":
            tags = " ".join("#" + w.replace(" ", "").lower() for w in words)
        elif style == "Title, ":
            tags = ", ".join(w[0].upper() + w[1:] for w in words)
        else:
            tags = style.join(words)
        base.append(row(topic, conv(ex, tags), reason="tag_list"))
    for reason, pattern in [("degenerate_repetition", p) for p in (
            "?" * 8, "{}!!!!!!!!", "{} the the the the", "{} Tips Tips Tips Tips",
            "{} and more and more and more and more",
            "{}\nRead more. Read more. Read more. Read more.",
            "{} | My Blog | My Blog | My Blog")] + [
            ("special_token_literal", "{}<|im_end|>"),
            ("special_token_literal", "<|im_start|>assistant\n{}"),
            ("special_token_literal", "{}<|endoftext|>"),
            ("empty_turn", " "), ("empty_turn", ""), ("too_short", "…"), ("too_short", "TBD"),
            ("wrong_language", D["german"])]:
        topic, ex, title = next(pool)
        base.append(row(topic, conv(ex, pattern.format(title)), reason=reason))
    (t1, ex1, ti1), (t2, ex2, _), (t3, ex3, ti3), (t4, ex4, ti4), (t5, ex5, ti5) = \
        [next(pool) for _ in range(5)]
    ask, system = TE.EN_TITLE_ASK[0], TE.EN_TITLE_SYSTEM[0]
    digest = too_long(D["long_ask"], (f"[{topic}] {ex}" for topic, ex, _ in entries))
    base += [
        row(t1, [("user", f"{ask}\n\n{ex1}"), ("system", system), ("assistant", ti1)],
            reason="bad_role_order"),
        row(t2, [("system", system), ("user", f"{ask}\n\n{ex2}")], reason="no_assistant_reply"),
        row(t3, [("user", f"{TE.EN_TITLE_ASK[1]}\n\n{ex3}")], reason="no_assistant_reply"),
        row("roundup", [("user", digest), ("assistant", D["long_reply"])], reason="too_long"),
        Row(F, raw=json.dumps({"messages": msgs(conv(ex4, ti4)), "tags": [t4]},
                              ensure_ascii=False)[:150], reason="malformed_json"),
        Row(F, raw=json.dumps(f"Title: {ti3}", ensure_ascii=False), reason="malformed_json"),
        Row(F, {"text": ex5, "title": ti5, "tags": [t5]}, reason="unknown_format")]

    def spaced(obj):  # two spaces after each sentence, a newline after the title
        *_, user, reply = obj["messages"]
        user.update(content=user["content"].replace(". ", ".  "))
        reply.update(content=reply["content"] + "\n")

    def wide(obj):  # the title in full-width letters and digits
        reply = obj["messages"][-1]
        reply.update(content=reply["content"].translate(FULLWIDTH))

    derived = []
    ids = [(True, False), (False, True), (True, True), (True, True)]  # as in gen_titles
    for src, (had_id, has_id), vary in zip(pick(g, base, 4), ids, (None, None, spaced, wide)):
        src.has_id = had_id
        derived.append(exact(src, has_id=has_id))
        if vary:
            vary(derived[-1].obj)
    for src in pick(g, base, 5, lambda r: EN_SWAP.search(r.obj["messages"][-2]["content"])):
        # a one-word edit of the opening (`very` -> `really`)
        derived.append(near(seen, src, lambda obj: obj["messages"][-2].update(
            content=edit(obj["messages"][-2]["content"], "en", g))))
    return base, derived


def generate(out_dir: Path, seed: int = 0, scale: int = 1) -> dict:
    """Writes the sample files and expected.json into ``out_dir``; returns what it wrote
    to expected.json."""
    g, seen = random.Random(seed), set()
    files: dict[str, list[Row]] = {name: [] for name in FILES}
    for blk in range(scale):
        prior: dict[str, list[Row]] = {}
        gens = (gen_titles, gen_instructions, gen_arithmetic, gen_mixed, gen_titles_en)
        for name, gen in zip(FILES, gens):
            base, derived = gen(g, blk, seen, prior)
            prior[name] = placed = g.sample(base, len(base))
            for row in derived:  # after its original: earlier in this file, or in an earlier file
                lo = placed.index(row.src) + 1 if row.src.file == name else 0
                placed.insert(g.randint(lo, len(placed)), row)
            files[name] += placed
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        for line, row in enumerate(rows, 1):
            row.line = line
        if name.endswith(".parquet"):
            pq.write_table(pa.table({c: pa.array([r.obj[c] for r in rows], pa.string())
                                     for c in ("instruction", "input", "output")}), out_dir / name)
            continue
        ids = iter(range(1, len(rows) + 1))
        lines = [row.raw if row.raw is not None else json.dumps(
            {"id": f"{ID_PREFIX[name]}-{next(ids):05d}", **row.obj} if row.has_id else row.obj,
            ensure_ascii=False)
            for row in rows]
        (out_dir / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = expectations(files, seed, scale)
    text = json.dumps(expected, ensure_ascii=False, indent=1)
    (out_dir / "expected.json").write_text(text + "\n", encoding="utf-8")
    return expected


def expectations(files: dict[str, list[Row]], seed: int, scale: int) -> dict:
    """expected.json from the rows as written; exact duplicates are found by content."""
    exp = {"seed": seed, "scale": scale, "files": {}, "reason_counts": {}, "rejected": [],
           "exact_duplicates": [], "near_duplicates": [], "repaired": []}
    first: dict[str, dict] = {}
    for name, rows in files.items():
        for row in rows:
            ref = {"file": name, "line": row.line}
            if row.reason:
                exp["rejected"].append({**ref, "reason": row.reason})
                exp["reason_counts"][row.reason] = exp["reason_counts"].get(row.reason, 0) + 1
                continue
            if (k := key(row.obj, name)) in first:
                exp["exact_duplicates"].append({**ref, "duplicate_of": first[k]})
            first.setdefault(k, ref)
            if row.kind == "near":
                exp["near_duplicates"].append({**ref, "duplicate_of": {"file": row.src.file,
                                                                       "line": row.src.line}})
            if row.repair:
                exp["repaired"].append({**ref, "field": "assistant", "kind": row.repair[0],
                                        "expected": row.repair[1]})
        rejected = sum(r["file"] == name for r in exp["rejected"])
        exp["files"][name] = {"rows": len(rows), "format": FILES[name], "rejected": rejected,
                              "kept": len(rows) - rejected}
    planted = [{"file": r.file, "line": r.line,
                "duplicate_of": {"file": r.src.file, "line": r.src.line}}
               for rows in files.values() for r in rows if r.kind == "exact"]
    assert planted == exp["exact_duplicates"], "exact duplicates other than the planted ones"
    return exp


# --- --check ------------------------------------------------------------------------------

def engine_rows(out_dir: Path) -> dict[tuple[str, int], dict]:
    """The files in ``out_dir`` read and cleaned by the engine with demo.yaml's config, in input
    order: (file name, line) -> {"reason", "read": messages as read, "clean": as normalised}.
    Files that demo.yaml does not list are read after its own, in FILES order."""
    from data_engine.config import InputConfig, load_config
    from data_engine.pipeline.clean import clean_batch
    from data_engine.readers.ingest import ingest_shards
    from data_engine.readers.shards import plan_shards

    config = load_config(HERE / "demo.yaml")
    listed = {Path(item.path).name for item in config.inputs}
    config.inputs += [InputConfig(path=name) for name in FILES if name not in listed]
    for item in config.inputs:  # the same files, in out_dir
        item.path = str(Path(out_dir).resolve() / Path(item.path).name)
    shards, _ = plan_shards(config.inputs, config.ray.shard_rows)
    read = ingest_shards(pa.Table.from_pylist([s.to_dict() for s in shards]), config.inputs)
    cleaned = clean_batch(read, config.clean)
    columns = [read.column(c).to_pylist() for c in ("_file", "_line", "messages")]
    columns += [cleaned.column(c).to_pylist() for c in ("_reason", "messages")]
    return {(Path(path).name, line): {"reason": reason, "read": before, "clean": after}
            for path, line, before, reason, after in zip(*columns)}


def check(out_dir: Path) -> list[str]:
    """Cleans the written files with the engine; returns every disagreement with expected.json."""
    exp = json.loads((out_dir / "expected.json").read_text(encoding="utf-8"))
    want = {(r["file"], r["line"]): r["reason"] for r in exp["rejected"]}
    data = engine_rows(out_dir)
    problems, first, exact_found = [], {}, []
    for name, f in exp["files"].items():
        if [line for n, line in data if n == name] != list(range(1, f["rows"] + 1)):
            problems.append(f"{name}: {sum(n == name for n, _ in data)} rows, not {f['rows']}")
    for (name, line), row in data.items():
        if (got := row["reason"]) != (wanted := want.get((name, line))):
            problems.append(f"{name}:{line}: expected {wanted}, the engine says {got}")
        if got or wanted:
            continue
        for reply in (m["content"] for m in row["read"] if m["role"] == "assistant"):
            if name != "arithmetic_zh.parquet" and HAN.search(reply) and not KANA.search(reply):
                problems.append(f"{name}:{line}: a Japanese reply without kana")
            if name == "arithmetic_zh.parquet" and KANA.search(reply):
                problems.append(f"{name}:{line}: a Chinese reply with kana")
        if (k := conversation(row["read"])) in first:
            exact_found.append({"file": name, "line": line, "duplicate_of": first[k]})
        first.setdefault(k, {"file": name, "line": line})
    if exact_found != exp["exact_duplicates"]:
        problems.append("the exact duplicates in the files differ from expected.json")

    def texts(ref: dict, stage: str = "read") -> list[str]:
        """The turns' texts of the row at ``ref`` as the engine has them ([""]: no such row)."""
        row = data.get((ref["file"], ref["line"]))
        return [m["content"] for m in row[stage]] if row else [""]

    for d in exp["near_duplicates"]:
        a, b = ("\n".join(texts(x)) for x in (d, d["duplicate_of"]))
        if a == b or difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() < 0.9:
            problems.append(f"{d['file']}:{d['line']}: not a near duplicate of its original")
    for d in exp["repaired"]:
        before, after = texts(d)[-1], texts(d, "clean")[-1]
        if before == d["expected"] or after != d["expected"]:
            problems.append(f"{d['file']}:{d['line']}: the engine's repair differs from expected")
    if (exp["scale"], exp["seed"]) == (1, 0) and README.exists():
        problems += check_readme(exp)
    return problems


def check_readme(exp: dict) -> list[str]:
    """README.md's tables must show the counts in expected.json (per file, then the total)."""
    names = list(FILES)
    counts: dict[str, list[int]] = {}
    groups = [("rejected", exp["rejected"]), ("exact duplicates", exp["exact_duplicates"]),
              ("near duplicates", exp["near_duplicates"])]
    groups += [(r, [e for e in exp["rejected"] if e["reason"] == r]) for r in exp["reason_counts"]]
    groups += [(f"repaired: {k}", [e for e in exp["repaired"] if e["kind"] == k])
               for k in ("mojibake", "width")]
    for label, entries in groups:
        counts[label] = [sum(e["file"] == n for e in entries) for n in names]
        counts[label].append(sum(counts[label]))
    counts.update({n: [f["rows"], f["rejected"], f["kept"]] for n, f in exp["files"].items()})
    problems, seen = [], set()
    for line in README.read_text(encoding="utf-8").splitlines():
        cells = [c.strip().strip("`*") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in counts:
            seen.add(cells[0])
            got = [int(c) for c in cells if c.isdigit()][-len(counts[cells[0]]):]
            if got != counts[cells[0]]:
                problems.append(f"README: {cells[0]} shows {got}, not {counts[cells[0]]}")
    return problems + [f"README: no table row for {label}" for label in counts if label not in seen]


def main(argv: list[str] | None = None) -> int:
    """Generates (default) or checks (--check) the files in --out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: data/ here")
    parser.add_argument("--rows-scale", type=int, default=1, help="blocks of rows per file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="verify --out; write nothing")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out)
        print("\n".join(problems) or f"{args.out}: every row matches expected.json")
        return 1 if problems else 0
    exp = generate(args.out, seed=args.seed, scale=args.rows_scale)
    for name, f in exp["files"].items():
        print(f"{name}: {f['rows']} rows, {f['rejected']} rejected")
    print("reasons:", json.dumps(exp["reason_counts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
