"""Dedup: exact and near duplicates, the keep rule, decontamination, and the graph helpers.

Most tests drive the stage's own functions without Ray (signature_batch -> band keys ->
bucket_pairs -> exact Jaccard -> decide); the tests marked `slow` go through `run()`.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from data_engine.config import DataConfig, DedupConfig, InputConfig
from data_engine.dedup.graph import bucket_pairs, components, pair_jaccard, unique_pairs
from data_engine.dedup.minhash import jaccard, ngram_hashes, ngram_sets
from data_engine.dedup.stage import decide, key_columns, signature_batch
from data_engine.dedup.text import call_text, exact_key, exact_text, near_text, prompt_text
from data_engine.run import run

from .helpers import chat, msg, work_table
from .test_run import SPLITS, check_contract, read_jsonl

THRESHOLD = DedupConfig().threshold


# --- a Ray-free pass through the stage's functions --------------------------------------------


def dedup_rows(conversations: list[list[dict]], ids: list[str] | None = None,
               config: DedupConfig | None = None):
    """What run_dedup decides for these (clean) rows, computed without Ray.

    Mirrors the stage: signatures and band keys per row, candidate pairs from equal keys in
    any band, exact pairs from equal exact hashes, candidates confirmed by exact Jaccard.
    Returns the `Cluster` and {id: (reason, duplicate_of)} for every row.
    """
    config = config or DedupConfig()
    table = work_table(conversations)
    if ids is not None:
        table = table.set_column(0, "id", pa.array(ids, pa.string()))
    table = table.append_column("_idx", pa.array(np.arange(len(conversations)), pa.int64()))
    signed = signature_batch(table, config, with_prompt=False)
    idx = signed.column("_idx").to_numpy()
    candidates = unique_pairs(np.concatenate(
        [bucket_pairs(signed.column(c).to_numpy(), idx) for c in key_columns("k", config.bands)]))
    exact_pairs = bucket_pairs(signed.column("exact").to_numpy(), idx, 1)
    sets = ngram_sets(signed.column("text").to_pylist(), config.ngram)  # _idx == position
    sim = np.array([jaccard(sets[a], sets[b]) for a, b in candidates.tolist()])
    near = sim >= config.threshold if len(sim) else np.zeros(0, bool)
    row_ids = signed.column("id").to_pylist()
    result = decide(config, exact_pairs, candidates[near], sim[near], np.zeros((0, 2), np.int64),
                    idx, signed.column("id"), signed.column("exact").to_numpy())
    verdict = {row_ids[i]: (r, d) for i, r, d in zip(result.idx.tolist(),
                                                     result.reason.to_pylist(),
                                                     result.duplicate_of.to_pylist())}
    return result, verdict


def similarity(a: list[dict], b: list[dict], n: int = 5) -> float:
    sa, sb = ngram_sets([near_text(a), near_text(b)], n)
    return jaccard(sa, sb)


# --- planted duplicates ------------------------------------------------------------------------


def _words(rng: random.Random, count: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(count)]


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def planted_rows(seed: int = 7, base: int = 420, exact: int = 45, near: int = 45):
    """Random-word conversations plus planted copies of some of them.

    Exact copies differ only in what NFKC and whitespace collapsing undo (full-width
    letters, doubled and trailing spaces); near copies replace, insert or delete one or two
    words. Every copy comes after its original. Returns (ids, conversations, truth) with
    truth {copy id: (kind, original id)}.
    """
    rng = random.Random(seed)
    vocab = _words(rng, 600)
    originals = []
    for i in range(base):
        user = " ".join(rng.choices(vocab, k=rng.randint(8, 14))) + "?"
        reply = " ".join(rng.choices(vocab, k=rng.randint(35, 55))) + "."
        originals.append((f"b{i}", user, reply))
    copies = []
    for c in range(exact + near):
        oid, user, reply = originals[rng.randrange(base)]
        if c < exact:
            style = c % 3
            if style == 0:
                reply = _fullwidth(reply)
            elif style == 1:
                reply = reply.replace(" ", "  ", 3) + "   "
            else:
                user = "  " + _fullwidth(user[:12]) + user[12:]
            copies.append((f"x{c}", "exact", oid, user, reply))
        else:
            edited = reply
            while edited == reply:
                words = reply.split(" ")
                for _ in range(rng.randint(1, 2)):
                    op, at = rng.randrange(3), rng.randrange(1, len(words) - 1)
                    if op == 0:
                        words[at] = rng.choice(vocab)
                    elif op == 1:
                        words.insert(at, rng.choice(vocab))
                    else:
                        del words[at]
                edited = " ".join(words)
            copies.append((f"n{c}", "near", oid, user, edited))
    rows = [(oid, user, reply) for oid, user, reply in originals]
    for cid, _, oid, user, reply in copies:  # each copy somewhere after its original
        at = next(i for i, r in enumerate(rows) if r[0] == oid)
        rows.insert(rng.randint(at + 1, len(rows)), (cid, user, reply))
    truth = {cid: (kind, oid) for cid, kind, oid, _, _ in copies}
    return [r[0] for r in rows], [chat(r[1], r[2]) for r in rows], truth


def test_planted_duplicates_precision_and_recall():
    ids, conversations, truth = planted_rows()
    assert 500 <= len(ids) <= 520
    by_id = dict(zip(ids, conversations))
    # The generator plants what it says: near copies are near by the definition used.
    for cid, (kind, oid) in truth.items():
        same = exact_key(by_id[cid]) == exact_key(by_id[oid])
        assert same == (kind == "exact"), cid
        if kind == "near":
            assert similarity(by_id[cid], by_id[oid]) >= THRESHOLD + 0.03, cid

    _, verdict = dedup_rows(conversations, ids)
    found = {i: v for i, v in verdict.items() if v[0] is not None}
    hits = [i for i in found if i in truth and found[i][1] == truth[i][1]]
    precision = len(hits) / max(len(found), 1)
    recall = len(hits) / len(truth)
    assert recall >= 0.97, sorted(set(truth) - set(hits))
    assert precision >= 0.99, sorted(set(found) - set(hits))
    # Kinds are told apart: a whitespace/full-width copy is exact, an edited one near.
    for i in hits:
        assert found[i][0] == f"{truth[i][0]}_duplicate", i
    # No original is ever dropped: each is the first of its cluster.
    assert not [i for i in found if i.startswith("b")]


# --- Japanese and Chinese ---------------------------------------------------------------------

JA_TITLE = "次の記事にタイトルを付けてください。\n"
JA_A = ("在宅勤務を始めて三年が経ちました。最初は集中できずに困りましたが、朝の散歩と作業場所の工夫で"
        "生活のリズムが整い、今では通勤していた頃よりも仕事がはかどっています。")
JA_B = ("週末に家族で京都へ出かけました。紅葉の季節で人は多かったものの、早朝に寺を訪ねたおかげで"
        "静かな庭をゆっくり眺めることができ、子どもたちも楽しそうでした。")
JA_C = ("家計簿をつけ始めてから、毎月の食費が思った以上に多いことに気づきました。まとめ買いと"
        "作り置きを続けた結果、半年で貯金が少しずつ増えてきています。")
ZH_TITLE = "请为下面的段落写一个标题。\n"
ZH_D = ("我每天早上六点起床，先跑步三十分钟，然后一边吃早饭一边听新闻。坚持了一年以后，"
        "我的身体变得更好了，工作的时候也更有精神。")
ZH_E = ("这个周末我们全家去了海边，孩子们在沙滩上堆城堡，我和妻子在旁边看书。晚上我们在一家"
        "小饭馆吃了新鲜的海鲜，大家都很开心。")
ZH_F = ("学习编程的第一个月最难，很多概念都听不懂。后来我每天写一点小程序，遇到问题就查资料，"
        "慢慢地开始理解函数和循环的用法。")
JA_A_TITLE = "在宅勤務三年目の私が見つけた、集中できる一日の過ごし方"
ZH_D_TITLE = "坚持晨跑一年，我的身体和精神都变好了"


def test_cjk_near_duplicates_found_and_same_template_rows_not():
    rows = {
        "ja": chat(JA_TITLE + JA_A, JA_A_TITLE),
        "ja-char": chat(JA_TITLE + JA_A.replace("三年", "四年"), JA_A_TITLE),  # one character
        "ja-word": chat(JA_TITLE + JA_A.replace("作業場所", "作業机"), JA_A_TITLE),  # one word
        "ja-b": chat(JA_TITLE + JA_B, "紅葉の京都を家族で歩いた週末の記録"),
        "ja-c": chat(JA_TITLE + JA_C, "家計簿で気づいた食費のムダと半年間の節約術"),
        "zh": chat(ZH_TITLE + ZH_D, ZH_D_TITLE),
        "zh-char": chat(ZH_TITLE + ZH_D.replace("六点", "七点"), ZH_D_TITLE),
        "zh-word": chat(ZH_TITLE + ZH_D.replace("跑步", "散步"), ZH_D_TITLE),
        "zh-e": chat(ZH_TITLE + ZH_E, "全家海边度假的快乐周末"),
        "zh-f": chat(ZH_TITLE + ZH_F, "从零开始学编程：我的第一个月"),
    }
    # Same template, different article: far below the threshold despite the shared prompt.
    for a, b in [("ja", "ja-b"), ("ja", "ja-c"), ("ja-b", "ja-c"), ("zh", "zh-e"),
                 ("zh", "zh-f"), ("zh-e", "zh-f")]:
        assert similarity(rows[a], rows[b]) < 0.3, (a, b)
    _, verdict = dedup_rows(list(rows.values()), list(rows))
    assert {i: v for i, v in verdict.items() if v[0]} == {
        "ja-char": ("near_duplicate", "ja"), "ja-word": ("near_duplicate", "ja"),
        "zh-char": ("near_duplicate", "zh"), "zh-word": ("near_duplicate", "zh")}
    assert verdict["ja"] == (None, None) and verdict["zh"] == (None, None)


def test_a_shared_system_prompt_does_not_make_rows_near_duplicates():
    # Agent, RAG and support datasets give every row one long system prompt. Compared with
    # it, 40 unrelated question/answer rows scored ~0.9 and chained into one cluster.
    rng = random.Random(3)
    system = "You are the support assistant of a parcel company. Policy:\n" + "\n".join(
        f"{i}. " + " ".join(_words(rng, 12)) for i in range(20))
    rows = [chat(" ".join(_words(rng, 14)) + "?", " ".join(_words(rng, 30)) + ".", system)
            for _ in range(40)]
    rows.append(chat(rows[0][1]["content"], rows[0][2]["content"], "Be brief."))
    assert len(system) > 1000 and similarity(rows[0], rows[1]) < 0.3
    _, verdict = dedup_rows(rows, [f"r{i}" for i in range(len(rows))])
    # Only the row whose turns repeat row 0's under another system prompt is a duplicate.
    assert {i: v for i, v in verdict.items() if v[0]} == {"r40": ("near_duplicate", "r0")}
    assert near_text(rows[0]) == near_text(rows[0][1:])


def test_cjk_punctuation_and_spacing_variants_are_one_near_text():
    """`。、` against the official `．，`, and a space (U+3000) beside CJK text, left the
    same article at Jaccard 0.61-0.82 and split it across train and test."""
    article = ("日本銀行は、政策金利を0.5%に引き上げると発表した。円相場は一時、1ドル=140円台まで"
               "上昇した。市場では、追加の利上げを見込む声も出ている。")
    plain = [msg("user", article), msg("assistant", "日銀、追加利上げを決定")]
    official = [msg("user", article.replace("、", "，").replace("。", "．")),
                msg("assistant", "日銀，追加利上げを決定")]
    spaced = [msg("user", article.replace("。", "。\u3000")),
              msg("assistant", "日銀、追加利上げを決定")]
    assert near_text(official) == near_text(spaced) == near_text(plain)
    assert exact_text(official) != exact_text(plain)  # the exact text keeps the marks
    # English keeps its spaces; a space beside CJK text goes even next to Latin words
    assert near_text([msg("user", "Tokyo  tower 東京 タワー")]) == "tokyo tower東京タワー"
    _, verdict = dedup_rows([plain, official, spaced], ["a", "b", "c"])
    assert verdict["b"][0] == verdict["c"][0] == "near_duplicate"


# --- exact normalisation and the keep rule (unit level) ---------------------------------------


def test_exact_text_normalises_width_and_whitespace_and_keeps_roles():
    plain = [msg("user", "Tokyo tower"), msg("assistant", "It is 333 m tall.")]
    wide = [msg("user", "Ｔｏｋｙｏ  tower "), msg("assistant", " It is ３３３ m\ttall.")]
    assert exact_text(wide) == exact_text(plain)
    assert exact_key(wide) == exact_key(plain)
    # The role is part of the text: the same words as a system turn are another conversation.
    as_system = [msg("system", "Tokyo tower"), msg("assistant", "It is 333 m tall.")]
    assert exact_key(as_system) != exact_key(plain)
    # ...while the near text compares contents only (case-folded), so it matches; a system
    # prompt is not in it (a template every row shares would make them all look alike).
    assert near_text(plain) == near_text(wide) == "tokyo tower\nit is 333 m tall."
    assert near_text(as_system) == "it is 333 m tall."
    assert exact_key([msg("user", "Tokyo Tower"), msg("assistant", "It is 333 m tall.")]) != \
        exact_key(plain)  # case matters for exact duplicates
    assert prompt_text(plain) == "tokyo tower"


def _tool_chat(call_id: str, arguments: str, name: str = "get_weather",
               call_key: str = "tool_calls") -> list[dict]:
    calls = [{"id": call_id, "type": "function",
              "function": {"name": name, "arguments": arguments}}]
    return [msg("user", "Weather in Paris?"),
            {"role": "assistant", "content": "", "reasoning_content": None,
             call_key: json.dumps(calls)},
            {"role": "tool", "content": '{"temp_c": 21}', "reasoning_content": None,
             "tool_calls": None, "tool_call_id": call_id},
            msg("assistant", "It is 21 degrees in Paris.")]


def test_tool_calls_compare_without_ids_and_argument_spacing():
    # One conversation logged twice: the call ids are random handles, and the arguments'
    # JSON differs in key order and spacing only.
    first = _tool_chat("call_8f3k2a", '{"city": "Paris", "unit": "c"}')
    again = _tool_chat("call_Zq01x9", '{"unit":"c","city":"Paris"}')
    assert exact_key(first) == exact_key(again)
    assert near_text(first) == near_text(again)
    assert "call_" not in exact_text(first) + near_text(first)
    # Another argument value, or another function, is another conversation.
    assert exact_key(_tool_chat("call_1", '{"city": "Lyon", "unit": "c"}')) != exact_key(first)
    assert exact_key(_tool_chat("call_1", '{"city": "Paris", "unit": "c"}',
                                name="get_forecast")) != exact_key(first)
    # Arguments given as an object (some datasets do), a ShareGPT single call, and text
    # that is not JSON.
    as_object = json.loads(first[1]["tool_calls"])
    as_object[0]["function"]["arguments"] = {"unit": "c", "city": "Paris"}
    turns = [dict(m) for m in first]
    turns[1]["tool_calls"] = json.dumps(as_object)
    assert exact_key(turns) == exact_key(first)
    assert call_text('{"name": "f", "arguments": "{\\"b\\": 1,  \\"a\\": 2}"}') == \
        '{"arguments":{"a":2,"b":1},"name":"f"}'
    assert call_text("get_weather(Paris)") == "get_weather(Paris)"


def test_keep_rule_is_first_in_input_order_and_names_the_kept_row():
    rng = random.Random(3)
    vocab = _words(rng, 300)
    user = " ".join(rng.choices(vocab, k=12))
    reply = " ".join(rng.choices(vocab, k=45))
    edited = reply.split(" ")
    edited[20] = "zzzzzz"
    variants = {"orig": chat(user, reply), "near": chat(user, " ".join(edited)),
                "exact": chat(_fullwidth(user), reply + "  ")}
    fillers = {f"f{i}": chat(" ".join(rng.choices(vocab, k=12)), " ".join(rng.choices(vocab, k=45)))
               for i in range(6)}
    for order in (["orig", "near", "exact"], ["near", "exact", "orig"],
                  ["exact", "orig", "near"]):
        ids = ["f0", "f1", order[0], "f2", "f3", order[1], "f4", order[2], "f5"]
        rows = [variants.get(i) or fillers[i] for i in ids]
        result, verdict = dedup_rows(rows, ids)
        first = order[0]
        assert verdict[first] == (None, None)
        for other in order[1:]:
            reason, dup_of = verdict[other]
            assert dup_of == first
            same_text = exact_key(variants[other]) == exact_key(variants[first])
            assert reason == ("exact_duplicate" if same_text else "near_duplicate")
        # One cluster, rooted at the first member's `_idx`; fillers are in no cluster.
        assert set(result.cluster.tolist()) == {ids.index(first)}
        assert not {f for f in fillers} & set(verdict)
        # Same input, same decision.
        assert dedup_rows(rows, ids)[1] == verdict


@pytest.mark.parametrize("exact,near", [(True, True), (False, True), (True, False),
                                        (False, False)])
def test_exact_and_near_switches(exact, near):
    rng = random.Random(5)
    vocab = _words(rng, 300)
    user, reply = " ".join(rng.choices(vocab, k=12)), " ".join(rng.choices(vocab, k=45))
    edited = reply.replace(reply.split(" ")[10], "qqqqq", 1)
    ids = ["a", "a-exact", "a-near"]
    rows = [chat(user, reply), chat(user + " ", reply), chat(user, edited)]
    result, verdict = dedup_rows(rows, ids, DedupConfig(exact=exact, near=near))
    assert verdict["a"] == (None, None)
    assert verdict["a-exact"][0] == ("exact_duplicate" if exact else None)
    assert verdict["a-near"][0] == ("near_duplicate" if near else None)
    assert {verdict[i][1] for i in ("a-exact", "a-near") if verdict[i][0]} <= {"a"}
    # Kept or not, they are one cluster: the split keeps a cluster on one side.
    assert result.cluster.tolist() == [0, 0, 0]


# --- graph helpers ----------------------------------------------------------------------------


def _pairs(arr: np.ndarray) -> set[tuple[int, int]]:
    return {tuple(p) for p in arr.tolist()}


def test_bucket_pairs_all_pairs_in_small_buckets_linear_in_large():
    keys = np.array([7, 3, 7, 3, 7, 9, 7, 7], dtype=np.int64)
    idx = np.array([10, 11, 12, 13, 14, 15, 16, 17], dtype=np.int64)
    got = _pairs(bucket_pairs(keys, idx))
    sevens = [10, 12, 14, 16, 17]
    want = {(a, b) for i, a in enumerate(sevens) for b in sevens[i + 1:]} | {(11, 13)}
    assert got == want
    assert bucket_pairs(np.array([1]), np.array([0])).shape == (0, 2)
    assert bucket_pairs(np.array([1, 2, 3]), np.array([0, 1, 2])).shape == (0, 2)

    # A bucket of 2,000 rows (a templated prompt) gives a linear number of pairs, all valid,
    # and still one connected component rooted at the smallest `_idx`.
    rng = np.random.default_rng(0)
    n = 2000
    idx = rng.permutation(n).astype(np.int64) + 100
    keys = np.where(np.arange(n) % 4 == 0, 5, rng.integers(1 << 40, 1 << 41, n))
    pairs = bucket_pairs(keys.astype(np.int64), idx)
    members = set(idx[keys == 5].tolist())
    m = len(members)
    assert m - 1 <= len(pairs) <= 9 * m
    assert set(pairs.ravel().tolist()) == members
    assert (pairs[:, 0] < pairs[:, 1]).all()
    nodes, roots = components(pairs)
    assert set(nodes.tolist()) == members and set(roots.tolist()) == {min(members)}
    # Every pair within window distance of the sorted bucket is there.
    ordered = sorted(members)
    window = _pairs(bucket_pairs(np.full(m, 5, np.int64), np.array(ordered, np.int64), 3))
    assert {(ordered[i], ordered[i + d]) for i in range(m - 3) for d in (1, 2, 3)} <= window


def test_components_chains_stars_and_separate_clusters():
    chain = np.array([[40, 50], [30, 40], [20, 30], [10, 20]], dtype=np.int64)  # reversed
    star = np.array([[7, 1], [7, 2], [7, 3], [7, 8]], dtype=np.int64)
    pair = np.array([[100, 200]], dtype=np.int64)
    nodes, roots = components(np.concatenate([chain, star, pair]))
    root = dict(zip(nodes.tolist(), roots.tolist()))
    assert root == {10: 10, 20: 10, 30: 10, 40: 10, 50: 10, 1: 1, 2: 1, 3: 1, 7: 1, 8: 1,
                    100: 100, 200: 100}
    assert list(nodes) == sorted(nodes)
    long_chain = np.stack([np.arange(1, 500), np.arange(0, 499)], axis=1)[::-1].copy()
    nodes, roots = components(long_chain)
    assert len(nodes) == 500 and set(roots.tolist()) == {0}
    empty_nodes, empty_roots = components(np.zeros((0, 2), np.int64))
    assert len(empty_nodes) == len(empty_roots) == 0
    assert _pairs(unique_pairs(np.array([[3, 1], [1, 3], [2, 2], [1, 3]]))) == {(1, 3)}


def test_unique_pairs_sorted_and_distinct():
    rng = np.random.default_rng(4)
    pairs = rng.integers(0, 30, (500, 2))
    got = unique_pairs(pairs)
    want = sorted({(min(a, b), max(a, b)) for a, b in pairs.tolist() if a != b})
    assert got.dtype == np.int64 and got.tolist() == [list(p) for p in want]
    assert unique_pairs(np.zeros((0, 2), np.int64)).shape == (0, 2)


def test_pair_jaccard_equals_jaccard_of_distinct_values():
    rng = np.random.default_rng(2)
    fill = np.iinfo(np.uint64).max  # the value padding uses: still counted as a value
    for _ in range(200):
        segments = []
        for _ in range(int(rng.integers(1, 12))):
            pool = rng.integers(0, int(rng.choice([3, 50, 1 << 62])), 64).astype(np.uint64)
            pool[:int(rng.integers(0, 3))] = fill
            segments.append(rng.choice(pool, int(rng.choice([0, 1, 2, 3, 5, 17, 40, 130]))))
        offsets = np.zeros(len(segments) + 1, np.int64)
        np.cumsum([len(v) for v in segments], out=offsets[1:])
        pairs = rng.integers(0, len(segments), (int(rng.integers(0, 20)), 2))
        got = pair_jaccard(np.concatenate(segments).astype(np.uint64), offsets, pairs)
        want = [jaccard(np.unique(segments[a]), np.unique(segments[b])) for a, b in pairs.tolist()]
        assert got.dtype == np.float64 and got.tolist() == want  # the same numbers, not close
    texts = ["the cat sat on the mat", "the cat sat on a mat", "", "x", "the cat sat on the mat"]
    hashes, offsets = ngram_hashes(texts, 5)
    pairs = np.array([[0, 1], [0, 4], [2, 3], [1, 2], [3, 3]])
    sets = ngram_sets(texts, 5)
    assert pair_jaccard(hashes, offsets, pairs).tolist() == [jaccard(sets[a], sets[b])
                                                             for a, b in pairs.tolist()]


def _plain_decide(config: DedupConfig, exact_pairs, near_pairs, near_sim, ref_pairs, ids, exact):
    """The keep rule row by row in Python: what `decide` computes with arrays."""
    nodes, roots = components(np.concatenate([exact_pairs, near_pairs]))
    contaminated = {int(a): int(b) for a, b in ref_pairs.tolist()}
    root_of = dict(zip(nodes.tolist(), roots.tolist()))
    kept_of: dict[int, int] = {}
    for node in nodes.tolist():
        if root_of[node] not in kept_of and node not in contaminated:
            kept_of[root_of[node]] = node
    sim = dict.fromkeys(set(root_of) | set(contaminated), 0.0)
    for (a, b), s in zip(np.concatenate([near_pairs, exact_pairs]).tolist(),
                         np.concatenate([near_sim, np.ones(len(exact_pairs))]).tolist()):
        sim[a], sim[b] = max(sim[a], s), max(sim[b], s)
    out = {}
    for node in sorted(sim):
        root = root_of.get(node, -1)
        keeper = kept_of.get(root)
        if node in contaminated:
            verdict = ("contaminates_reference", ids[contaminated[node]])
        elif keeper is None or node == keeper:
            verdict = (None, None)
        elif exact[node] == exact[keeper]:
            verdict = ("exact_duplicate" if config.exact else None, ids[keeper])
        else:
            verdict = ("near_duplicate" if config.near else None, ids[keeper])
        out[node] = (root, *verdict, sim[node])
    return out


@pytest.mark.parametrize("exact,near", [(True, True), (False, True), (True, False)])
def test_decide_matches_the_plain_keep_rule(exact, near):
    config = DedupConfig(exact=exact, near=near)
    # Hand-made: 1-2-3 (3 an exact copy of 1), 5-6 with 5 contaminated (6 is kept), 8-9 both
    # contaminated (no row kept), 11 contaminated by two reference rows (names the last).
    base = 1 << 40
    exact_pairs = np.array([[1, 3]])
    near_pairs = np.array([[1, 2], [2, 3], [5, 6], [8, 9]])
    near_sim = np.array([0.9, 0.85, 0.8, 0.95])
    ref_pairs = np.array([[5, base], [8, base + 1], [9, base], [11, base], [11, base + 1]])
    idx = np.array([1, 2, 3, 5, 6, 8, 9, 11, base, base + 1])
    ids = pa.array([f"r{i}" for i in idx.tolist()])
    hashes = np.array([10, 20, 10, 30, 40, 50, 60, 70, 80, 90])
    result = decide(config, exact_pairs, near_pairs, near_sim, ref_pairs, idx, ids, hashes)
    got = dict(zip(result.idx.tolist(), zip(result.cluster.tolist(), result.reason.to_pylist(),
                                            result.duplicate_of.to_pylist(),
                                            result.similarity.tolist())))
    want = _plain_decide(config, exact_pairs, near_pairs, near_sim, ref_pairs,
                         dict(zip(idx.tolist(), ids.to_pylist())),
                         dict(zip(idx.tolist(), hashes.tolist())))
    assert got == want
    assert got[3][1:3] == ("exact_duplicate" if exact else None, "r1")
    assert got[6][1:3] == (None, None) and got[11] == (-1, "contaminates_reference",
                                                       f"r{base + 1}", 0.0)
    # Random graphs, reference rows and exact hashes against the plain rule.
    rng = np.random.default_rng(9)
    for _ in range(30):
        rows = np.unique(rng.integers(0, 60, 40))
        pairs = unique_pairs(rng.choice(rows, (int(rng.integers(0, 40)), 2)))
        is_exact = rng.random(len(pairs)) < 0.3
        count = int(rng.integers(0, 6))
        refs = np.stack([rng.choice(rows, count), base + rng.integers(0, 3, count)], axis=1)
        idx = np.concatenate([rows, base + np.arange(3)])
        ids = pa.array([f"r{i}" for i in idx.tolist()])
        hashes = rng.integers(0, 3, len(idx))
        sim = rng.random(int((~is_exact).sum()))
        result = decide(config, pairs[is_exact], pairs[~is_exact], sim, refs, idx, ids, hashes)
        got = dict(zip(result.idx.tolist(), zip(result.cluster.tolist(),
                                                result.reason.to_pylist(),
                                                result.duplicate_of.to_pylist(),
                                                result.similarity.tolist())))
        assert got == _plain_decide(config, pairs[is_exact], pairs[~is_exact], sim, refs,
                                    dict(zip(idx.tolist(), ids.to_pylist())),
                                    dict(zip(idx.tolist(), hashes.tolist())))


# --- end to end through run() -----------------------------------------------------------------

LONG_1 = JA_TITLE + (
    "はじめまして。東京で働きながら二人の子どもを育てている三十代の会社員です。このブログでは、"
    "仕事と子育てを両立するために試してきたことや、朝の時間の使い方、家事を減らす工夫、"
    "子どもと過ごす週末の楽しみ方などを、失敗談も含めて正直に書いていきます。保育園の送り迎えや"
    "在宅勤務の日の過ごし方についても、少しずつまとめる予定です。同じように毎日を走り回っている方の、"
    "少しでも参考になればうれしいです。")
LONG_2 = JA_TITLE + (
    "朝五時に起きる習慣を一年続けてみました。最初の一か月は眠くて仕方がありませんでしたが、"
    "夜のスマホをやめて早く寝るようにしたところ、自然と目が覚めるようになりました。"
    "静かな朝の一時間で読書や勉強をする時間が取れ、一日を落ち着いて始められるようになったことが"
    "何よりの変化です。続けるコツは、完璧を目指さずに寝坊した日も気にしないことでした。")


def _line(rid: str, messages: list[dict], **extra) -> str:
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
    return json.dumps({"id": rid, "messages": messages, **extra}, ensure_ascii=False)


def _random_chats(seed: int, count: int, prefix: str) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    vocab = _words(rng, 500)
    return {f"{prefix}{i}": chat(" ".join(rng.choices(vocab, k=12)) + "?",
                                 " ".join(rng.choices(vocab, k=40)) + ".")
            for i in range(count)}


@pytest.fixture(scope="module")
def dedup_run(ray_local, tmp_path_factory):
    """One run over rows built for the keep-rule, normalisation and decontamination tests."""
    tmp = tmp_path_factory.mktemp("dedup")
    rng = random.Random(11)
    vocab = _words(rng, 400)
    x_user = " ".join(rng.choices(vocab, k=14)) + "?"
    x_reply = " ".join(rng.choices(vocab, k=50)) + "."
    x_words = x_reply.split(" ")
    near1 = " ".join(x_words[:10] + ["changed"] + x_words[11:])
    near2 = " ".join(x_words[:30] + x_words[31:])
    eval_q = "How many moons does " + " ".join(rng.choices(vocab, k=12)) + " have?"
    crowded_q = "Explain the rules of " + " ".join(rng.choices(vocab, k=12)) + "."
    shared_answer = " ".join(rng.choices(vocab, k=40)) + "."
    rows = [
        # A defective row before its clean near twin: the twin is kept.
        ("tag", chat(LONG_1, "自己紹介｜子育て｜ワーママ｜30代")),
        ("tag-twin", chat(LONG_1, "30代ワーママの自己紹介：仕事と子育てを両立する毎日")),
        ("loop", chat(LONG_2, "朝時間の使い方」」」」」」」」")),
        ("loop-twin", chat(LONG_2, "朝五時起きを一年続けて変わった私の毎日")),
        # A cluster: the first in input order is kept, the others name it.
        ("x", chat(x_user, x_reply)),
        ("x-near1", chat(x_user, near1)),
        ("x-exact", chat(_fullwidth(x_user[:20]) + x_user[20:], x_reply.replace(" ", "  ", 5))),
        ("x-near2", chat(x_user, near2)),
        ("tokyo", chat("Tokyo tower: how tall is it?", "The Tokyo tower is 333 metres tall.")),
        ("tokyo-wide", chat("Ｔｏｋｙｏ  tower: how tall is it?",
                            "The Ｔｏｋｙｏ tower is 333 metres tall. ")),
        # Decontamination: same prompt as an eval row, different answer.
        ("leak", chat(eval_q.upper(),
                      "I believe the answer is " + " ".join(rng.choices(vocab, k=8)))),
        ("same-answer", chat(" ".join(rng.choices(vocab, k=12)) + "?", shared_answer)),
    ]
    # More rows sharing one eval prompt than an LSH bucket window holds.
    rows += [(f"crowd{i}", chat(crowded_q, " ".join(rng.choices(vocab, k=40)) + "."))
             for i in range(14)]
    rows += list(_random_chats(12, 30, "r").items())
    (tmp / "train.jsonl").write_text("\n".join(_line(i, m) for i, m in rows) + "\n",
                                     encoding="utf-8")
    (tmp / "eval.jsonl").write_text("\n".join([
        _line("eval-moons", chat(eval_q, "Four.")),
        _line("eval-crowd", chat(crowded_q, "Nobody knows.")),
        _line("eval-answer", chat("A question nobody in training asks about anything at all?",
                                  shared_answer)),
    ]) + "\n", encoding="utf-8")
    config = DataConfig(inputs=[InputConfig(path=str(tmp / "train.jsonl"))])
    config.dedup.reference.inputs = [InputConfig(path=str(tmp / "eval.jsonl"))]
    result = run(config, tmp / "out", progress=False)
    check_contract(result.out_dir)
    rejected = {r["id"]: r for r in read_jsonl(result.out_dir / "rejected.jsonl")}
    kept = {r["id"]: split for split in SPLITS
            for r in read_jsonl(result.out_dir / f"{split}.jsonl")}
    return {"rows": dict(rows), "rejected": rejected, "kept": kept, "manifest": result.manifest}


@pytest.mark.slow
def test_run_keeps_the_clean_twin_of_a_defective_row(dedup_run):
    rows, rejected, kept = dedup_run["rows"], dedup_run["rejected"], dedup_run["kept"]
    # The pairs really are near duplicates: dedup would pick the first if it saw both.
    assert similarity(rows["tag"], rows["tag-twin"]) >= THRESHOLD + 0.02
    assert similarity(rows["loop"], rows["loop-twin"]) >= THRESHOLD + 0.02
    assert rejected["tag"]["reason"] == "tag_list" and rejected["tag"]["stage"] == "clean"
    assert rejected["loop"]["reason"] == "degenerate_repetition"
    assert "tag-twin" in kept and "loop-twin" in kept
    assert not {"tag-twin", "loop-twin"} & set(rejected)


@pytest.mark.slow
def test_run_keep_rule_and_duplicate_of(dedup_run):
    rejected, kept = dedup_run["rejected"], dedup_run["kept"]
    assert "x" in kept
    got = {i: (rejected[i]["reason"], rejected[i]["duplicate_of"])
           for i in ("x-near1", "x-exact", "x-near2")}
    assert got == {"x-near1": ("near_duplicate", "x"), "x-exact": ("exact_duplicate", "x"),
                   "x-near2": ("near_duplicate", "x")}
    assert all(rejected[i]["stage"] == "dedup" for i in got)
    # NFKC and whitespace: the full-width Tokyo row is an exact duplicate of the plain one.
    assert "tokyo" in kept
    assert (rejected["tokyo-wide"]["reason"], rejected["tokyo-wide"]["duplicate_of"]) == \
        ("exact_duplicate", "tokyo")
    # The rejected record carries the row as it was read, full-width and all.
    assert "Ｔｏｋｙｏ" in rejected["tokyo-wide"]["row"]["messages"][0]["content"]
    facts = dedup_run["manifest"]["dedup"]
    assert facts["removed"]["exact_duplicate"] == 2 and facts["removed"]["near_duplicate"] == 2


@pytest.mark.slow
def test_run_decontaminates_against_a_reference_set(dedup_run):
    rejected, kept = dedup_run["rejected"], dedup_run["kept"]
    assert rejected["leak"]["reason"] == "contaminates_reference"
    assert rejected["leak"]["duplicate_of"] == "eval-moons"
    assert rejected["leak"]["stage"] == "dedup"
    # Matched by prompt: sharing only the answer with a reference row is no leak.
    assert "same-answer" in kept
    # Unrelated rows are untouched.
    assert all(f"r{i}" in kept for i in range(30))
    contaminated = {i for i, r in rejected.items() if r["reason"] == "contaminates_reference"}
    assert contaminated <= {"leak"} | {f"crowd{i}" for i in range(14)}
    assert dedup_run["manifest"]["dedup"]["reference_rows"] == 3


@pytest.mark.slow
def test_run_decontaminates_every_row_sharing_a_reference_prompt(dedup_run):
    rejected = dedup_run["rejected"]
    missed = [f"crowd{i}" for i in range(14)
              if rejected.get(f"crowd{i}", {}).get("reason") != "contaminates_reference"]
    assert missed == []


@pytest.mark.slow
def test_run_where_every_row_is_contaminated(ray_local, tmp_path):
    question = "What is the capital city of France and why is it famous?"
    reply = "Paris, for the Eiffel tower, its museums and much more."
    (tmp_path / "in.jsonl").write_text(
        "\n".join(_line(f"t{i}", chat(question, reply)) for i in range(2)) + "\n")
    (tmp_path / "eval.jsonl").write_text(_line("eval-paris", chat(question, "Paris.")) + "\n")
    config = DataConfig(inputs=[InputConfig(path=str(tmp_path / "in.jsonl"))])
    config.dedup.reference.inputs = [InputConfig(path=str(tmp_path / "eval.jsonl"))]
    result = run(config, tmp_path / "out", progress=False)
    assert result.manifest["counts"]["kept"] == 0
    assert result.manifest["counts"]["rejected"]["contaminates_reference"] == 2


@pytest.mark.slow
def test_run_with_duplicates_kept_puts_each_cluster_on_one_side(ray_local, tmp_path):
    ids, conversations, truth = planted_rows(seed=21, base=120, exact=30, near=30)
    (tmp_path / "in.jsonl").write_text(
        "\n".join(_line(i, m) for i, m in zip(ids, conversations)) + "\n", encoding="utf-8")
    config = DataConfig(inputs=[InputConfig(path=str(tmp_path / "in.jsonl"))])
    config.dedup.exact = False
    config.dedup.near = False
    config.split.train, config.split.validation, config.split.test = 0.5, 0.25, 0.25
    result = run(config, tmp_path / "out", progress=False)
    manifest = check_contract(result.out_dir)  # includes: the leak check found nothing
    assert manifest["counts"]["kept"] == len(ids)
    assert not any(manifest["dedup"]["removed"].values())
    split_of = {r["id"]: split for split in SPLITS
                for r in read_jsonl(result.out_dir / f"{split}.jsonl")}
    clusters: dict[str, set[str]] = {}
    for cid, (_, oid) in truth.items():
        clusters.setdefault(oid, {oid}).add(cid)
    assert len(clusters) >= 40
    for members in clusters.values():
        assert len({split_of[m] for m in members}) == 1, members
    # The clusters really were seen: with dedup on they are removed.
    assert manifest["dedup"]["clusters"] == len(clusters)
    assert manifest["leak_check"]["near_pairs_in_output"] >= len(truth)
    # Kept clusters still let every split fill up.
    assert all(manifest["counts"]["splits"][s] > 0 for s in SPLITS)


@pytest.mark.slow
def test_run_on_existing_ray_keeps_first_row_in_input_order(ray_local, tmp_path):
    rng = random.Random(4)
    vocab = _words(rng, 400)
    user = " ".join(rng.choices(vocab, k=14)) + "?"
    reply = " ".join(rng.choices(vocab, k=45)) + "."
    # Shard 0 (20 rows) is slow to clean: the original plus long rows. Shards 1-3 are fast
    # and each holds an exact copy.
    lines = [_line("orig", chat(user, reply))]
    lines += [_line(f"slow{i}", chat("Summarise.", "".join(chr(0x4E00 + rng.randrange(3000))
                                                           for _ in range(100_000))))
              for i in range(19)]
    for shard in range(1, 4):
        lines.append(_line(f"copy{shard}", chat(user, reply)))
        lines += [_line(f"s{shard}-{i}", m)
                  for i, m in enumerate(_random_chats(shard, 19, "x").values())]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = DataConfig(inputs=[InputConfig(path=str(tmp_path / "in.jsonl"))])
    config.ray.shard_rows = 20
    result = run(config, tmp_path / "out", progress=False)
    rejected = {r["id"]: r for r in read_jsonl(result.out_dir / "rejected.jsonl")}
    assert "orig" not in rejected, rejected["orig"]
    assert {rejected[f"copy{s}"]["duplicate_of"] for s in range(1, 4)} == {"orig"}


# --- the signing fast paths against their plain definitions ------------------------------------

def _random_texts(seed: int, count: int) -> list[str]:
    """ASCII, Latin with accents, kana with (combining) voicing marks, CJK, full-width forms,
    odd spaces, astral characters (emoji, CJK extension B), and empty strings."""
    rng = random.Random(seed)
    pools = ["abc xyz\t\n", "éèüÅ\u0301\u0308", "かがてでカガ\u3099\u309a", "東京塔中文字",
             "ＴＯＫＹＯ１２\u3000ｶﾞ", "\U0001F600\U00020000\U0002F800", "가\u11a8\u1161ᄀ"]
    return ["".join(rng.choice(rng.choice(pools)) for _ in range(rng.choice([0, 1, 3, 40, 700])))
            for _ in range(count)]


def test_ngram_hashes_match_their_definition():
    from data_engine.dedup.minhash import _FNV_PRIME, _MIX_1, _MIX_2, ngram_hashes

    def plain(text: str, n: int) -> list[int]:  # FNV-1a over code points, then a mixer
        framed = "\x00" * (n - 1) + text + "\x00" * (n - 1)
        out = []
        for i in range(len(framed) - n + 1):
            h = 0
            for ch in framed[i:i + n]:
                h = ((h ^ ord(ch)) * int(_FNV_PRIME)) % 2**64
            for shift, mix in ((31, int(_MIX_1)), (29, int(_MIX_2)), (32, 1)):
                h = ((h ^ (h >> shift)) * mix) % 2**64
            out.append(h)
        return out

    texts = _random_texts(0, 120) + ["", "a" * 70_000]  # the long one spans several blocks
    for n in (1, 2, 5):
        hashes, offsets = ngram_hashes(texts, n)
        assert len(offsets) == len(texts) + 1 and offsets[-1] == len(hashes)
        for i, text in enumerate(texts):
            assert hashes[offsets[i]:offsets[i + 1]].tolist() == plain(text, n)
    hashes, offsets = ngram_hashes([], 5)
    assert len(hashes) == 0 and offsets.tolist() == [0]


def test_nfkc_is_skipped_only_where_it_changes_nothing():
    import pyarrow.compute as pc

    from data_engine.dedup.text import _PLANE_2, _canonical, _nfkc_may_change

    # Every character outside the class is NFKC on its own ...
    outside = pa.array([chr(c) for c in range(0x80, _PLANE_2) if not 0xD800 <= c < 0xE000])
    outside = outside.filter(pc.invert(pc.match_substring_regex(outside, _nfkc_may_change())))
    assert len(outside) > 50_000
    assert pc.utf8_normalize(outside, "NFKC").equals(outside)
    # ... and in strings of them; strings with any character are canonicalised as if NFKC ran
    # on all of them.
    rng = random.Random(1)
    chars = outside.to_pylist()
    texts = ["".join(rng.choice(chars) for _ in range(rng.randint(1, 8))) for _ in range(20_000)]
    texts += _random_texts(2, 3000)
    values = pa.array(texts)
    plain = pc.utf8_trim(pc.replace_substring_regex(pc.utf8_normalize(values, "NFKC"),
                                                    r"[\s\p{Z}]+", " "), " ")
    assert _canonical(values).equals(plain)


def test_exact_keys_and_signatures_match_their_definitions():
    import hashlib

    from rensa import RMinHash

    from data_engine.dedup.minhash import ngram_hashes, signatures
    from data_engine.dedup.text import BatchTexts, batch_texts
    from data_engine.schema import MESSAGE_TYPE

    texts = _random_texts(3, 300)
    rows = pa.array([[{"role": "user", "content": t, "reasoning_content": None,
                       "tool_calls": None}] for t in texts], pa.list_(MESSAGE_TYPE))
    batch = batch_texts(rows)
    sliced = BatchTexts(batch.exact_array.slice(7, 100), batch.near_array, batch.near_turns,
                        batch.is_user, batch.offsets)
    for exact_texts, keys in ((batch.exact, batch.exact_keys), (sliced.exact, sliced.exact_keys)):
        assert keys.tolist() == [int.from_bytes(hashlib.blake2b(
            t.encode("utf-8"), digest_size=8).digest(), "big") >> 1 for t in exact_texts]
    hashes, offsets = ngram_hashes(batch.near, 5)
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets.astype(np.uint64),
                                                           num_perm=128, seed=7)
    assert np.array_equal(signatures(batch.near, 5, 128, 7),
                          np.asarray(matrix.to_rows(), dtype=np.uint32))


def test_lower_equals_utf8_lower():
    """`_lower` uses ascii_lower where no byte of `_CASED_STARTS` is: no other character
    changes under utf8_lower (every code point), and mixed strings agree too."""
    import pyarrow.compute as pc

    from data_engine.dedup.text import _CASED_STARTS, _lower

    chars = pa.array([chr(c) for c in range(0x80, 0x110000) if not 0xD800 <= c < 0xE000])
    changed = chars.filter(pc.not_equal(pc.utf8_lower(chars), chars)).to_pylist()
    assert len(changed) > 1000
    assert all(any(lo <= ch.encode()[0] <= hi for lo, hi in _CASED_STARTS) for ch in changed)
    texts = _random_texts(4, 3000) + ["ÀBC", "ＡＢＣ", "ΣΑΣ", "İ", None, ""]
    values = pa.array(texts, pa.string())
    assert _lower(values).equals(pc.utf8_lower(values))
    assert _lower(values.slice(5, 100)).equals(pc.utf8_lower(values.slice(5, 100)))


def test_canonical_keeps_nulls_and_skips_ascii_for_nfkc():
    import pyarrow.compute as pc

    from data_engine.dedup.text import _canonical

    values = pa.array(["ＡＢ  c", None, "", " a\tb ", "ﬁ", None, "x\u3000y"], pa.string())
    plain = pc.utf8_trim(pc.replace_substring_regex(pc.utf8_normalize(values, "NFKC"),
                                                    r"[\s\p{Z}]+", " "), " ")
    assert _canonical(values).equals(plain)
    assert _canonical(pa.array(["a", None], pa.string())).to_pylist() == ["a", None]
