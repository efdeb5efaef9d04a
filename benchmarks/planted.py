"""Synthetic chat rows with planted duplicates and defects, and the truth about them.

Run: .venv/bin/python benchmarks/planted.py --rows 200000 --out /tmp/planted

Writes `rows.jsonl` (OpenAI `messages` rows with our own ids, Japanese article titles and
English answers) and `truth.json`. Deterministic for a seed; lines are streamed to disk.

- Base rows are random sentences over a few hundred words per language, 200-700 characters
  per conversation; random pairs share few character 5-grams (`truth.json` reports the max
  exact Jaccard over sampled pairs).
- About 5% of rows are exact duplicates of a base row (byte-identical, or varied only in
  ways NFKC and whitespace collapsing undo: full-width digits and letters, doubled spaces,
  trailing whitespace), about 5% near duplicates (1-3 replaced, inserted or deleted words or
  a few characters, more for longer rows: the exact Jaccard to the original has a 5th
  percentile of 0.89 and a median of 0.94; about 1 in 20,000 falls below 0.8).
  A cluster has 1-3 copies; each copy comes later in the file than its original, at a
  log-uniform distance (some close, some far apart), never right after it.
- About 6% of rows have a tag-list reply and 3% a degenerate one (character runs, a word
  repeated, a phrase looped 20 times); they are never duplicates of anything.

`truth.json`: clusters (`kind`, `ids` with the original first), defect ids, counts, and the
exact Jaccard of each near copy to its original by the project's own definition (padded
character 5-grams of the near text). Every copy is checked against the project's exact key:
equal for exact copies, different for near ones.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import math
import random
import re
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # As a script this folder leads sys.path, and its data_engine.py would shadow the package.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import pyarrow as pa

from data_engine.dedup.minhash import jaccard, ngram_sets
from data_engine.dedup.text import BatchTexts, batch_texts
from data_engine.schema import MESSAGE_TYPE

NGRAM = 5
EXACT_RATE = 0.05  # share of all rows that are exact copies
NEAR_RATE = 0.05  # share of all rows that are near copies
TAG_LIST_RATE = 0.06
DEGENERATE_RATE = 0.03
COPIES = (1, 2, 3)  # copies per cluster ...
COPY_WEIGHTS = (0.8, 0.15, 0.05)  # ... and how often each size occurs
MEAN_COPIES = sum(c * w for c, w in zip(COPIES, COPY_WEIGHTS))
BASE_SAMPLE = 2000  # base rows kept (reservoir) to measure the Jaccard of random pairs
BASE_PAIRS = 5000
CHECK_CHUNK = 2048  # copies checked against the project's texts per batch
SENTENCE_BATCH = 8192  # sentences drawn per NumPy batch

# --- vocabularies -----------------------------------------------------------------------------

JA_NOUNS = """
子育て 在宅勤務 家計 旅行 朝食 英会話 筋肉 読書 副業 キャンプ 睡眠 料理 引っ越し 転職 散歩 映画
音楽 写真 絵本 図書館 公園 電車 自転車 天気 季節 桜 紅葉 温泉 海辺 山道 川沿い 森林 庭 台所
冷蔵庫 洗濯 掃除 買い物 市場 野菜 果物 魚 肉 お米 味噌汁 お弁当 コーヒー 紅茶 お菓子 パン ケーキ
会議 資料 上司 同僚 部下 会社 仕事 給料 貯金 投資 保険 税金 年金 病院 医者 薬 健康 運動 ヨガ
ランニング マラソン 水泳 サッカー 野球 テニス 将棋 囲碁 ゲーム アプリ スマホ パソコン 検索 メール
ブログ 動画 配信 番組 ニュース 新聞 雑誌 小説 漫画 アニメ 俳優 歌手 先生 学生 授業 宿題 試験
受験 大学 留学 資格 勉強 研究 論文 実験 データ 統計 数学 物理 化学 歴史 地理 政治 経済 社会
文化 言葉 漢字 方言 翻訳 通訳 外国 京都 大阪 東京 北海道 沖縄 九州 地方 田舎 都会 駅前 空港
ホテル 旅館 予約 切符 地図 橋 建物 部屋 家具 机 椅子 ベッド 窓 玄関 階段 屋根 家族 両親 祖父
祖母 兄弟 姉妹 息子 娘 赤ちゃん 保育園 幼稚園 小学校 友達 恋人 結婚 誕生日 記念日 お祭り 花火
年末 正月 夏休み 週末 早朝 夜更かし 昼休み 時間 習慣 目標 計画 予算 失敗 成功 経験 工夫 悩み
不安 自信 気持ち 笑顔 趣味 手紙 日記 手帳 文房具 万年筆 ノート 鞄 財布 腕時計 眼鏡 洋服 靴
帽子 傘 化粧 髪型 香水 ペット 犬 猫 金魚 小鳥 観葉植物 花壇 種まき 肥料 農業 漁業 工場 職人
道具 機械 ロボット 人工知能 電気代 ガス 水道 エネルギー 環境 ごみ 節約 地域 町内会 ボランティア
選挙 法律 契約 相談 面接 履歴書 名刺 挨拶 敬語 マナー 礼儀 伝統 茶道 書道 着物 神社 お寺 お城
博物館 美術館 劇場 舞台 楽器 ピアノ ギター 合唱 ダンス 絵画 彫刻 陶芸 手芸 編み物 裁縫 日曜大工
模型 鉄道 バス 船旅 飛行機 車 運転 駐車場 渋滞 信号 雨の日 雪国 台風 防災 非常食 懐中電灯 救急箱
""".split()
JA_VERBS = """
始める 続ける 見直す 整える 選ぶ 比べる 調べる 学ぶ 教える 伝える 考える 試す 使う 作る 育てる
守る 減らす 増やす 変える 決める 集める 片付ける 楽しむ 味わう 訪ねる 記録する 計算する 準備する
工夫する 予約する 節約する 整理する 練習する 挑戦する 応援する 紹介する 説明する 比較する 改善する
発見する 注文する 掃除する 探す 届ける 分ける 包む 磨く 直す 借りる 返す 貯める 覚える 思い出す
見つける 手放す 取り入れる 見極める 組み立てる 書き出す 振り返る 持ち歩く 乗り越える 仕上げる
""".split()
JA_ADJECTIVES = """
新しい 古い 楽しい 難しい 優しい 嬉しい 忙しい 美しい 厳しい 面白い 細かい 大きい 小さい 長い
短い 明るい 暗い 温かい 冷たい 強い 弱い 安い 軽い 重い 広い 狭い 深い 珍しい 懐かしい 心地よい
賢い 若い 涼しい 静かな 便利な 大切な 丁寧な 簡単な 不思議な 素敵な 身近な 特別な 自由な 安全な
豊かな 有名な 地味な 派手な 正直な 手軽な 意外な 確かな 贅沢な 快適な
""".split()
JA_PREDICATES = """
楽しい 難しい 嬉しい 忙しい 美しい 面白い 心地よい 懐かしい 珍しい 大切です 便利です 簡単です
意外です 快適です 手軽です 不思議です 必要です 十分です 重要です 気になります
""".split()

EN_NOUNS = """
garden budget bread habit team review marathon recipe kitchen window library teacher student
lesson homework exam project meeting report deadline manager colleague client customer market
price invoice contract lawyer doctor patient nurse clinic medicine exercise muscle diet coffee
tea breakfast lunch dinner vegetable fruit salad soup oven pan knife fridge freezer bicycle
car train bus ticket station airport hotel map river mountain forest beach lake island bridge
street village city country language grammar sentence paragraph essay novel poem author editor
magazine newspaper camera photo painting museum concert guitar piano song singer movie actor
theater game puzzle chess football tennis swimming runner coach player stadium server database
query cache compiler function variable module package library framework test script terminal
keyboard monitor laptop phone battery charger network router password account profile message
email calendar schedule notebook pencil backpack wallet umbrella jacket shoe sweater blanket
pillow sofa table chair lamp mirror carpet garage roof ladder hammer drill screw paint brush
plant flower seed soil tree leaf bird dog cat fish horse rabbit weather storm rain snow winter
summer spring autumn holiday weekend morning evening family parent child friend neighbor
wedding birthday party gift letter story memory dream goal plan mistake lesson routine
""".split()
EN_VERBS = """
build plan review check clean cook write read test measure compare choose start finish change
improve repair paint plant water prepare organize share explain teach learn practice record
track reduce increase save spend borrow return order deliver pack carry replace update install
configure debug deploy refactor document schedule cancel visit explore describe design sketch
rewrite simplify split merge sort label store protect warm cool mix stir bake boil roast slice
""".split()
EN_ADJECTIVES = """
small large quiet busy simple careful quick slow bright dark warm cold fresh old new heavy light
cheap expensive clean messy strong gentle narrow wide short long early late useful rare common
modern ancient local remote private public honest patient curious calm noisy smooth rough sharp
soft solid fragile friendly formal casual healthy tired happy nervous proud steady reliable
""".split()
EN_ADVERBS = """
slowly quickly carefully usually rarely often gently quietly clearly simply firmly daily weekly
""".split()

_JA_SENTENCES = [
    "{n}を{v}ために、{n}と{n}の使い方を{v}ことにしました。",
    "{a}{n}は{n}よりも{p}と感じる人が多いようです。",
    "{d}年前から{n}で{n}を{v}ようになりました。",
    "毎日{d}分だけ{n}に時間を使うと、{a}{n}が{p}。",
    "{n}を{v}ときは、まず{a}{n}を{v}のがおすすめです。",
    "私の{n}では、{n}を{v}のが{p}。",
    "{n}に詳しい{n}によると、{n}は{a}{n}に近いそうです。",
    "最初は{n}がうまくいかず、{n}を{v}ことから始めました。",
    "{d}月になると{n}の季節なので、{a}{n}を{v}予定です。",
    "{n}と{n}を同時に{v}のは{p}と思います。",
    "{a}{n}を{v}だけで、{n}の印象が変わります。",
    "週に{d}回は{n}へ行き、{n}を{v}ようにしています。",
]
_JA_TITLES = [
    "{a}{n}で{n}を{v}方法", "{n}と{n}の{a}関係", "{d}つの{n}で変わる{n}",
    "なぜ{n}は{p}のか", "{n}を{v}前に知っておきたい{d}のこと", "{a}{n}から始める{n}入門",
    "{n}で{v}{a}{n}", "私が{n}を{v}理由", "{d}日で{n}を{v}{a}コツ", "{n}好きが選ぶ{a}{n}",
]
_EN_SENTENCES = [
    "Try to {v} the {a} {n} before you {v} your {n}.",
    "A {a} {n} will {r} help you {v} the {n} in {d} weeks.",
    "Most people {v} their {n} {r} and then {v} a {a} {n}.",
    "If the {n} feels {a}, {v} the {n} first and {v} it again later.",
    "Keep a {a} {n} near the {n} so you can {v} it {r}.",
    "After {d} days you should {v} the {n} and compare it with the {a} {n}.",
    "Ask a {a} {n} to {v} your {n} once a month.",
    "The {n} matters less than a {a} {n} that you {v} {r}.",
    "Write down how you {v} the {n} and which {a} {n} you used.",
    "Do not {v} every {n} at once; pick a {a} {n} and {v} it.",
    "Your {n} can {r} {v} a {n}.",
    "Nobody expects a {a} {n} to {v} on day {d}.",
    "When I {v} my {n} I {r} forget the {n}.",
    "Good {n} {r} starts with a {a} {n}.",
    "Consider how a {n} and a {n} {v} together.",
    "Use {d} {n}s, not a {a} {n}.",
]
_EN_QUESTIONS = [
    "How should I {v} a {a} {n} when my {n} is {a}?",
    "What is the best way to {v} the {n} for a {a} {n}?",
    "Can you explain how to {v} my {n} in {d} days?",
    "Why does my {n} get {a} after I {v} the {n}?",
    "Is it worth it to {v} a {a} {n} every week?",
    "Which {n} should I {v} first?",
    "My {n} is {a}; should I {v} it?",
    "Where do I {v} {d} {a} {n}s?",
]
_JA_SYSTEM = "あなたは記事のタイトルを考える編集者です。"
_JA_ASK = "次の記事にタイトルを付けてください。\n"
_EN_SYSTEM = "You are a helpful assistant. Answer in plain English."
_SLOT = re.compile(r"\{([nvapdr])\}")


class _Vocab:
    """One language's words per template slot: n(oun) v(erb) a(djective) p(redicate) r (adverb)."""

    def __init__(self, words: dict[str, list[str]], boundary: str):
        self.words = words
        # Longest first, so an edit finds 観葉植物 rather than 植物 inside it; no set order,
        # which changes with the process's hash seed.
        self.all = sorted({w for ws in words.values() for w in ws}, key=lambda w: (-len(w), w))
        self.pattern = re.compile(boundary + "(?:" + "|".join(map(re.escape, self.all)) + ")"
                                  + boundary)


JA = _Vocab({"n": JA_NOUNS, "v": JA_VERBS, "a": JA_ADJECTIVES, "p": JA_PREDICATES}, "")
EN = _Vocab({"n": EN_NOUNS, "v": EN_VERBS, "a": EN_ADJECTIVES, "r": EN_ADVERBS}, r"\b")


class _Filler:
    """Random sentences from templates, no word twice in one sentence.

    Sentences are drawn in vectorised batches (NumPy picks every slot's word at once): a
    million rows need about ten million sentences.
    """

    def __init__(self, rng: random.Random, vocab: _Vocab, templates: list[str]):
        self.random = rng.random
        self.np = np.random.default_rng(rng.getrandbits(64))
        self.formats = [_SLOT.sub("{}", t) for t in templates]
        slots = [_SLOT.findall(t) for t in templates]
        width = max(map(len, slots))
        pools = {**vocab.words, "d": [str(d) for d in range(2, 13)]}
        # A template's unused slots get an empty pool each, so they never look equal.
        pools.update({f"unused{j}": [""] for j in range(width)})
        words: list[str] = []
        where: dict[str, tuple[int, int]] = {}  # pool -> (first index in words, size)
        for kind, pool in pools.items():
            where[kind] = (len(words), len(pool))
            words += pool
        self.words = np.array(words, dtype=object)
        padded = [kinds + [f"unused{j}" for j in range(len(kinds), width)] for kinds in slots]
        table = np.array([[where[k] for k in kinds] for kinds in padded])  # (start, size)
        self.start, self.size = table[..., 0], table[..., 1]
        self.ready: list[str] = []

    def sentence(self) -> str:
        if not self.ready:
            self._draw(SENTENCE_BATCH)
        return self.ready.pop()

    def text(self, min_chars: int, max_chars: int, joiner: str) -> str:
        """Sentences up to a random length in [min_chars, max_chars]."""
        target = min_chars + int(self.random() * (max_chars - min_chars))
        parts: list[str] = []
        size = 0
        while size < target:
            parts.append(self.sentence())
            size += len(parts[-1]) + len(joiner)
        return joiner.join(parts)

    def _draw(self, count: int) -> None:
        templates = self.np.integers(len(self.formats), size=count)
        start, size = self.start[templates], self.size[templates]
        picks = start + (self.np.random(start.shape) * size).astype(np.int64)
        while (redo := (np.diff(np.sort(picks, axis=1), axis=1) == 0).any(axis=1)).any():
            picks[redo] = start[redo] + (self.np.random((int(redo.sum()), start.shape[1]))
                                         * size[redo]).astype(np.int64)
        formats = self.formats
        self.ready = [formats[t].format(*w) for t, w in zip(templates.tolist(),
                                                             self.words[picks].tolist())]


# --- rows -------------------------------------------------------------------------------------

Messages = list[dict[str, str]]


@dataclass
class _Row:
    source: str
    messages: Messages

    def line(self, rid: str) -> str:
        return json.dumps({"id": rid, "messages": self.messages, "source": self.source},
                          ensure_ascii=False)


def _conversation(system: str, user: str, reply: str) -> Messages:
    return [{"role": "system", "content": system}, {"role": "user", "content": user},
            {"role": "assistant", "content": reply}]


class _Generator:
    """Base rows, defective rows and copies for one language."""

    def __init__(self, rng: random.Random, source: str, vocab: _Vocab):
        self.rng = rng
        self.source = source
        self.vocab = vocab
        self.ja = source == "ja_titles"
        if self.ja:
            self.body = _Filler(rng, vocab, _JA_SENTENCES)
            self.reply = _Filler(rng, vocab, _JA_TITLES)
        else:
            self.body = _Filler(rng, vocab, _EN_QUESTIONS)
            self.reply = _Filler(rng, vocab, _EN_SENTENCES)

    def _prompt(self) -> str:
        if self.ja:
            return _JA_ASK + self.body.text(150, 560, "")
        return self.body.text(30, 140, " ")

    def base(self) -> _Row:
        if self.ja:
            return _Row(self.source,
                        _conversation(_JA_SYSTEM, self._prompt(), self.reply.sentence()))
        return _Row(self.source, _conversation(_EN_SYSTEM, self._prompt(),
                                               self.reply.text(110, 480, " ")))

    def tag_list(self) -> _Row:
        rng = self.rng
        nouns = self.vocab.words["n"]
        style = rng.randrange(3)
        if self.ja:
            words = rng.sample(nouns, rng.randint(3, 6))
            if style == 0:
                reply = "｜".join([*words[:-1], f"{rng.randint(2, 6)}0代"])
            elif style == 1:
                reply = " ".join("#" + w for w in words)
            else:
                reply = "・".join(words + rng.sample(nouns, 1))
        else:
            words = rng.sample(nouns, rng.randint(4, 7))
            if style == 0:
                reply = ", ".join(words)
            elif style == 1:
                reply = " | ".join(words)
            else:
                reply = " ".join("#" + w for w in words)
        system = _JA_SYSTEM if self.ja else _EN_SYSTEM
        return _Row(self.source, _conversation(system, self._prompt(), reply))

    def degenerate(self) -> _Row:
        rng = self.rng
        style = rng.randrange(3)
        if self.ja:
            title = self.reply.sentence()
            if style == 0:
                reply = title + "」" * rng.randint(6, 40)
            elif style == 1:
                reply = title + "です" * rng.randint(3, 12)
            else:
                reply = title * 20
            return _Row(self.source, _conversation(_JA_SYSTEM, self._prompt(), reply))
        sentence = self.reply.sentence()
        if style == 0:  # a word of 2+ letters looped (the filter lets `a a a` and `4 4 4` pass)
            words = sentence.split(" ")
            i = rng.choice([i for i, w in enumerate(words) if w.isalpha() and len(w) > 1])
            reply = " ".join(words[:i] + [words[i]] * rng.randint(3, 8) + words[i + 1:])
        elif style == 1:
            reply = sentence + " " + " ".join(["the"] * rng.randint(4, 10))
        else:
            reply = " ".join([sentence] * 20)
        return _Row(self.source, _conversation(_EN_SYSTEM, self._prompt(), reply))

    def exact_copy(self, row: _Row) -> _Row:
        """A copy that NFKC plus whitespace collapsing maps back onto ``row``."""
        messages = [dict(m) for m in row.messages]
        turn = messages[self.rng.choice((1, 2))]
        text = turn["content"]
        style = self.rng.randrange(3)
        if style == 1 and re.search(r"[0-9A-Za-z]", text):
            # Full-width digits and letters in one word: `3年` -> `３年`, `The` -> `Ｔｈｅ`.
            spans = [m.span() for m in re.finditer(r"[0-9A-Za-z]+", text)]
            start, end = self.rng.choice(spans)
            wide = "".join(chr(ord(c) + 0xFEE0) for c in text[start:end])
            turn["content"] = text[:start] + wide + text[end:]
        elif style == 2:
            spaces = [i for i, c in enumerate(text) if c == " "]
            if spaces:
                i = self.rng.choice(spaces)
                turn["content"] = text[:i] + " " + text[i:]  # a doubled space
            else:
                turn["content"] = text + self.rng.choice((" ", "\n", "\u3000"))
        return _Row(row.source, messages)

    def near_copy(self, row: _Row) -> _Row:
        """A copy with 1-3 small edits, more for longer rows."""
        length = sum(len(m["content"]) for m in row.messages)
        edits = self.rng.randint(1, 3) if length < 400 else self.rng.randint(2, 3)
        # Again until the edits change more than whitespace or case (or cancel out) and leave
        # every turn most of its length (three deletions could leave a title one character).
        while True:
            messages = [dict(m) for m in row.messages]
            for _ in range(edits):
                turn = messages[self.rng.choice((1, 2))]
                turn["content"] = self._edit(turn["content"])
            pairs = [(a["content"], b["content"]) for a, b in zip(messages, row.messages)]
            if (any(_loose(new) != _loose(old) for new, old in pairs)
                    and all(len(new) >= 0.7 * len(old) for new, old in pairs)):
                return _Row(row.source, messages)

    def _edit(self, text: str) -> str:
        rng = self.rng
        # The first word after a random position (or the text's first word).
        match = (self.vocab.pattern.search(text, rng.randrange(len(text)))
                 or self.vocab.pattern.search(text))
        style = rng.randrange(4)
        if style == 3 or match is None:
            # A few characters: deleted, or replaced by characters from elsewhere in the text.
            i = rng.randrange(max(1, len(text) - 3))
            k = rng.randint(1, 3 if self.ja else 2)
            if rng.random() < 0.5:
                return text[:i] + text[i + k:]
            j = rng.randrange(len(text))
            return text[:i] + text[j:j + k] + text[i + k:]
        start, end = match.span()
        if style == 0:  # replace a word
            new = match.group()
            while new == match.group():
                new = rng.choice(self.vocab.all)
            return text[:start] + new + text[end:]
        if style == 1:  # insert an adjective before a word
            new = rng.choice(self.vocab.words["a"])
            return text[:start] + new + ("" if self.ja else " ") + text[start:]
        # delete a word
        end += 0 if self.ja or end >= len(text) or text[end] != " " else 1
        return text[:start] + text[end:]


def _loose(text: str) -> str:
    """Roughly the project's near text of one turn: NFKC, whitespace collapsed, lower case."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).lower()


def _texts(conversations: list[Messages]) -> BatchTexts:
    """The project's exact and near texts of ``conversations``, computed as one batch."""
    return batch_texts(pa.array(conversations, pa.list_(MESSAGE_TYPE)))


# --- the file ---------------------------------------------------------------------------------

@dataclass(order=True)
class _Pending:
    due: int  # the slot (line index) the copy should land on
    seq: int
    cluster: int = field(compare=False)
    row: _Row = field(compare=False)


class _Planter:
    """Decides what each line of the file is and records the truth about it."""

    def __init__(self, rows: int, seed: int):
        self.rows = rows
        self.seed = seed
        self.rng = random.Random(seed)
        self.makers = [_Generator(self.rng, "ja_titles", JA),
                       _Generator(self.rng, "en_answers", EN)]
        fresh = 1.0 - EXACT_RATE - NEAR_RATE  # share of rows that are not copies
        self.p_tag = TAG_LIST_RATE / fresh
        self.p_defect = (TAG_LIST_RATE + DEGENERATE_RATE) / fresh
        base_share = fresh - TAG_LIST_RATE - DEGENERATE_RATE
        self.p_exact = EXACT_RATE / (base_share * MEAN_COPIES)
        self.p_copied = (EXACT_RATE + NEAR_RATE) / (base_share * MEAN_COPIES)
        self.pending: list[_Pending] = []  # copies waiting for their line
        self.seq = 0
        self.clusters: list[dict[str, Any]] = []
        self.defects: dict[str, list[str]] = {"tag_list": [], "degenerate_repetition": []}
        self.near_jaccard: list[float] = []
        self.unchecked: list[tuple[str, Messages, Messages]] = []  # (kind, original, copy)
        self.base_rows = 0
        self.base_sample: list[Messages] = []  # a reservoir sample of base rows

    def line(self, slot: int) -> str:
        """The JSONL line at ``slot``."""
        rid = f"r{slot}"
        left = self.rows - slot
        if self.pending and (self.pending[0].due <= slot or len(self.pending) >= left):
            copy = heapq.heappop(self.pending)
            self.clusters[copy.cluster]["ids"].append(rid)
            return copy.row.line(rid)
        rng = self.rng
        maker = self.makers[rng.randrange(2)]
        draw = rng.random()
        if draw < self.p_defect:
            kind = "tag_list" if draw < self.p_tag else "degenerate_repetition"
            self.defects[kind].append(rid)
            return (maker.tag_list() if kind == "tag_list" else maker.degenerate()).line(rid)
        row = maker.base()
        self._sample_base(row)
        draw = rng.random()
        if draw < self.p_copied:
            count = rng.choices(COPIES, COPY_WEIGHTS)[0]
            # Enough lines left that no copy is forced out right after its original.
            if left - len(self.pending) > count + 10:
                self._plant_copies(maker, row, rid, slot,
                                   "exact" if draw < self.p_exact else "near", count)
        return row.line(rid)

    def _plant_copies(self, maker: _Generator, row: _Row, rid: str, slot: int, kind: str,
                      count: int) -> None:
        cluster = len(self.clusters)
        self.clusters.append({"kind": kind, "ids": [rid]})
        left = self.rows - slot
        for _ in range(count):
            copy = maker.exact_copy(row) if kind == "exact" else maker.near_copy(row)
            self.unchecked.append((kind, row.messages, copy.messages))
            # Log-uniform distance: as many copies 2-20 lines away as 20k-200k lines away.
            due = slot + int(math.exp(self.rng.uniform(math.log(2), math.log(left))))
            heapq.heappush(self.pending, _Pending(min(due, self.rows - 1), self.seq, cluster, copy))
            self.seq += 1
        if len(self.unchecked) >= CHECK_CHUNK:
            self.check_copies()

    def _sample_base(self, row: _Row) -> None:
        self.base_rows += 1
        if len(self.base_sample) < BASE_SAMPLE:
            self.base_sample.append(row.messages)
        elif (i := self.rng.randrange(self.base_rows)) < BASE_SAMPLE:
            self.base_sample[i] = row.messages

    def check_copies(self) -> None:
        """Checks the copies made since the last call by the project's exact keys, and scores
        each near copy's exact Jaccard to its original."""
        if not self.unchecked:
            return
        kinds, originals, copies = zip(*self.unchecked)
        texts = _texts([*originals, *copies])
        keys, count = texts.exact_keys, len(kinds)
        for kind, same in zip(kinds, keys[:count] == keys[count:]):
            if same != (kind == "exact"):
                raise AssertionError(f"a planted {kind} copy has the wrong exact key")
        near = [i for i, kind in enumerate(kinds) if kind == "near"]
        sets = ngram_sets([texts.near[j] for i in near for j in (i, count + i)], NGRAM)
        self.near_jaccard += [jaccard(sets[i], sets[i + 1]) for i in range(0, len(sets), 2)]
        self.unchecked.clear()

    def truth(self) -> dict[str, Any]:
        """The truth file's content, once every line is written."""
        self.check_copies()
        sets = ngram_sets(_texts(self.base_sample).near, NGRAM)
        pairs = [self.rng.sample(range(len(sets)), 2) for _ in range(BASE_PAIRS * (len(sets) > 1))]
        base_pairs = [jaccard(sets[i], sets[j]) for i, j in pairs]
        counts: dict[str, int] = {"base": self.base_rows}
        for kind in ("exact", "near"):
            clusters = [c for c in self.clusters if c["kind"] == kind]
            counts[f"{kind}_clusters"] = len(clusters)
            counts[f"{kind}_copies"] = sum(len(c["ids"]) - 1 for c in clusters)
        counts.update({kind: len(ids) for kind, ids in self.defects.items()})
        jac = self.near_jaccard
        return {
            "rows": self.rows,
            "seed": self.seed,
            "counts": counts,
            "near_copy_jaccard": {**_stats(jac), "count": len(jac),
                                  "below_0.8": sum(j < 0.8 for j in jac)},
            "base_pair_jaccard": {**_stats(base_pairs), "pairs": len(base_pairs)},
            "clusters": self.clusters,
            "defects": self.defects,
        }


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {"min": round(float(a.min()), 4), "p05": round(float(np.quantile(a, 0.05)), 4),
            "median": round(float(np.median(a)), 4), "max": round(float(a.max()), 4),
            "mean": round(float(a.mean()), 4)}


def generate(rows: int, out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Writes ``out_dir/rows.jsonl`` and ``out_dir/truth.json``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path, truth_path = out_dir / "rows.jsonl", out_dir / "truth.json"
    planter = _Planter(rows, seed)
    # Nothing here makes reference cycles, and collections that walk the growing truth
    # would cost a third of the time at a million rows.
    gc.disable()
    try:
        with rows_path.open("w", encoding="utf-8") as out:
            for slot in range(rows):
                out.write(planter.line(slot) + "\n")
        truth = planter.truth()
    finally:
        gc.enable()
    truth_path.write_text(json.dumps(truth, ensure_ascii=False), encoding="utf-8")
    return rows_path, truth_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="folder for rows.jsonl, truth.json")
    args = parser.parse_args()
    start = time.perf_counter()
    rows_path, truth_path = generate(args.rows, args.out, args.seed)
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    print(f"{rows_path} ({args.rows:,} rows) in {time.perf_counter() - start:.1f} s")
    print(json.dumps({k: truth[k] for k in ("counts", "near_copy_jaccard", "base_pair_jaccard")}))


if __name__ == "__main__":
    main()
