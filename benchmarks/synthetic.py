"""Synthetic chat rows for benchmarks: Japanese titles and English answers with planted defects.

Deterministic for a seed. Each row is unique (numbers and word choices vary), except the
defects: tag lists, degenerate repetition, malformed lines and rows of no known shape.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

_JA_TOPICS = ["子育て", "在宅勤務", "家計管理", "京都旅行", "朝ごはん", "英語学習", "筋トレ", "読書習慣",
              "副業", "キャンプ", "睡眠", "プログラミング", "料理", "引っ越し", "転職"]
_JA_BODIES = ["{t}について、{n}年続けて分かったことを書きます。最初はうまくいきませんでしたが、"
              "小さな工夫を重ねるうちに習慣になりました。",
              "{t}を始めたい人向けに、必要な準備と最初の{n}週間の過ごし方をまとめました。",
              "{t}で失敗した経験から、{n}つの教訓を紹介します。同じ失敗をしないためのヒントです。"]
_JA_TITLES = ["{t}を{n}年続けて分かった大切なこと", "初心者のための{t}入門：最初の{n}週間",
              "{t}で失敗した私が伝えたい{n}つの教訓", "今日から始める{t}のコツ{n}選"]
_EN_TOPICS = ["unit tests", "a budget", "sourdough bread", "a garden", "sleep habits", "Python",
              "public speaking", "a small team", "code review", "a marathon"]
_EN_ANSWERS = ["Start small with {t}: pick one step you can repeat for {n} days, then add more.",
               "The key to {t} is consistency. Spend {n} minutes a day and review what worked.",
               "For {t}, write down your goal, measure it weekly, and adjust after {n} weeks."]


def make_rows(n: int, seed: int = 0, defect_rate: float = 0.12) -> list[str]:
    """Returns ``n`` JSONL lines; about ``defect_rate`` of them carry a defect."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        k = rng.randint(2, 99)
        if rng.random() < defect_rate:
            lines.append(_defect(rng, i, k))
        elif rng.random() < 0.6:
            t = rng.choice(_JA_TOPICS)
            lines.append(json.dumps({"id": f"ja-{i}", "messages": [
                {"role": "system", "content": "あなたは記事のタイトルを考える編集者です。"},
                {"role": "user", "content": "次の記事にタイトルを付けてください。\n"
                                            + rng.choice(_JA_BODIES).format(t=t, n=k) + f"（{i}）"},
                {"role": "assistant", "content": rng.choice(_JA_TITLES).format(t=t, n=k)}]},
                ensure_ascii=False))
        else:
            t = rng.choice(_EN_TOPICS)
            lines.append(json.dumps({"conversations": [
                {"from": "human", "value": f"How do I get better at {t}? (question {i})"},
                {"from": "gpt", "value": rng.choice(_EN_ANSWERS).format(t=t, n=k)}]}))
    return lines


def _defect(rng: random.Random, i: int, k: int) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        tags = "｜".join(rng.sample(_JA_TOPICS, 4))
        return json.dumps({"id": f"tag-{i}", "messages": [
            {"role": "user", "content": f"記事のタイトルを付けて（{i}）"},
            {"role": "assistant", "content": tags}]}, ensure_ascii=False)
    if kind == 1:
        return json.dumps({"id": f"rep-{i}", "messages": [
            {"role": "user", "content": f"タイトルを考えて（{i}）"},
            {"role": "assistant", "content": rng.choice(_JA_TOPICS) + "」" * (6 + k % 20)}]},
            ensure_ascii=False)
    if kind == 2:
        return '{"id": "broken-%d", "messages": [' % i
    return json.dumps({"id": f"unk-{i}", "text": f"row {i} has no known shape"})


def write_rows(path: Path, n: int, seed: int = 0) -> Path:
    path.write_text("\n".join(make_rows(n, seed)) + "\n", encoding="utf-8")
    return path
