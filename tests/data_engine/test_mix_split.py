"""Mixing sources by weight, and the exact, stratified, group-respecting split."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_engine.config import DataConfig, InputConfig, MixConfig, SplitConfig
from data_engine.errors import ConfigError
from data_engine.pipeline.mix import apportion, mix
from data_engine.pipeline.split import (_PRIORITY, _greedy_splits, _id_ranks, assign_splits,
                                        leak_check, split_targets)
from data_engine.run import _same_value_links, lineage_pairs, run
from data_engine.schema import SPLITS

from .test_run import check_contract, read_jsonl


def sources_of(counts: dict[str, int], seed: int = 0) -> list[str]:
    """Source names in a shuffled input order, ``counts[name]`` rows each."""
    rows = [name for name, n in counts.items() for _ in range(n)]
    random.Random(seed).shuffle(rows)
    return rows


# --- mix ---------------------------------------------------------------------------------------


def test_interleave_follows_weights_and_stops_when_a_source_runs_out():
    sources = sources_of({"a": 3000, "b": 3000, "c": 500})
    result = mix(sources, MixConfig(strategy="interleave", weights={"a": 3, "b": 1}), seed=1)
    picked = Counter(sources[i] for i in result.rows.tolist())
    # a (weight 3) runs out first; b got about a third as many; c (no weight) got nothing.
    assert picked["a"] == 3000
    assert abs(picked["b"] / (picked["a"] + picked["b"]) - 0.25) < 0.02
    assert picked["c"] == 0
    assert len(set(result.rows.tolist())) == len(result.rows)  # no repeats
    assert not result.copy.any()
    assert sorted(result.surplus.tolist()) == sorted(set(range(len(sources)))
                                                     - set(result.rows.tolist()))
    facts = result.facts["sources"]
    assert facts["a"]["after"] == 3000 and facts["c"] == {"before": 500, "after": 0,
                                                         "repeats": 0, "share": 0.0}
    assert abs(facts["b"]["share"] - 0.25) < 0.02
    # Proportions hold all along the output, not only in total.
    head = Counter(sources[i] for i in result.rows[:2000].tolist())
    assert abs(head["a"] / 2000 - 0.75) < 0.04


def test_interleave_with_total_stops_there():
    sources = sources_of({"a": 1000, "b": 1000})
    result = mix(sources, MixConfig(strategy="interleave", weights={"a": 1, "b": 1}, total=600),
                 seed=2)
    assert len(result.rows) == 600
    picked = Counter(sources[i] for i in result.rows.tolist())
    assert abs(picked["a"] - 300) < 40
    assert len(result.surplus) == 1400
    assert result.facts["warnings"] == [] and result.facts["total_asked"] == 600


def test_mix_warns_of_a_source_left_out_of_the_weights_and_of_a_short_interleave():
    """Both used to leave rows out with no word: a source the weights do not name (CRAFT's
    rows, whose source is `craft`) went wholly to mix_surplus, and interleave stopped at 51
    of the 400 rows of `total` with the manifest's total reading 51."""
    sources = sources_of({"seeds": 100, "big": 1000, "craft": 30})
    result = mix(sources, MixConfig(strategy="interleave", weights={"seeds": 1, "big": 1},
                                    total=600), seed=2)
    assert len(result.rows) < 300 and result.facts["total_asked"] == 600
    left_out, short = result.facts["warnings"]
    assert left_out == ("mix: source 'craft' (30 rows) is not in mix.weights, so none of its "
                        "rows are kept; give it a weight to keep them")
    assert short.startswith(f"mix: interleave stopped at {len(result.rows)} of the 600 rows "
                            "of mix.total, when 'seeds' ran out")
    zero = mix(sources, MixConfig(strategy="resample", weights={"seeds": 1, "big": 1,
                                                                "craft": 0}), seed=2)
    assert zero.facts["warnings"] == []  # a weight of 0 says it on purpose


def test_resample_gives_exact_counts_with_numbered_repeats():
    sources = sources_of({"small": 70, "big": 2000, "off": 50})
    config = MixConfig(strategy="resample", weights={"small": 1, "big": 3}, total=1000)
    result = mix(sources, config, seed=3)
    picked = Counter(sources[i] for i in result.rows.tolist())
    assert picked == {"small": 250, "big": 750}
    # small: 3 whole copies (210) plus a sample of 40; copy numbers count the repeats.
    small = [(int(r), int(c)) for r, c in zip(result.rows, result.copy) if sources[r] == "small"]
    per_row = Counter(r for r, _ in small)
    assert set(per_row.values()) == {3, 4} and sum(v == 4 for v in per_row.values()) == 40
    for row in per_row:
        assert sorted(c for r, c in small if r == row) == list(range(per_row[row]))
    assert Counter(c for _, c in small) == {0: 70, 1: 70, 2: 70, 3: 40}
    # big: a sample without repeats; off (weight 0): surplus.
    big = [r for r in result.rows.tolist() if sources[r] == "big"]
    assert len(set(big)) == 750
    assert {sources[i] for i in result.surplus.tolist()} == {"big", "off"}
    assert len(result.surplus) == 1250 + 50
    facts = result.facts["sources"]
    assert facts["small"] == {"before": 70, "after": 250, "repeats": 180, "share": 0.25}
    assert facts["big"]["repeats"] == 0 and facts["off"]["after"] == 0
    assert result.facts["total"] == 1000
    # Output order is shuffled, not source by source.
    first = [sources[i] for i in result.rows[:100].tolist()]
    assert 5 < first.count("small") < 50


def test_resample_default_total_is_the_rows_available():
    sources = sources_of({"a": 100, "b": 300})
    result = mix(sources, MixConfig(strategy="resample", weights={"a": 1, "b": 1}), seed=0)
    assert Counter(sources[i] for i in result.rows.tolist()) == {"a": 200, "b": 200}
    assert result.facts["sources"]["a"]["repeats"] == 100


def test_all_zero_weights_mean_equal_and_none_keeps_input_order():
    sources = sources_of({"a": 500, "b": 100})
    result = mix(sources, MixConfig(strategy="resample", weights={"a": 0, "b": 0}, total=400),
                 seed=0)
    assert Counter(sources[i] for i in result.rows.tolist()) == {"a": 200, "b": 200}
    none = mix(sources, MixConfig(), seed=0)
    assert none.rows.tolist() == list(range(600)) and not len(none.surplus)
    assert none.facts["sources"]["b"] == {"before": 100, "after": 100, "repeats": 0,
                                          "share": round(100 / 600, 4)}


def test_unknown_source_in_weights_is_a_config_error():
    sources = sources_of({"a": 10, "b": 10})
    for strategy in ("interleave", "resample"):
        with pytest.raises(ConfigError) as err:
            mix(sources, MixConfig(strategy=strategy, weights={"a": 1, "typo": 2}), seed=0)
        assert err.value.problems[0].startswith("mix.weights.typo:")
        assert "a, b" in err.value.problems[0]
        assert "mix.weights.typo" in str(err.value)


def test_mix_is_seeded():
    sources = sources_of({"a": 400, "b": 300, "c": 50})
    for config in (MixConfig(strategy="interleave", weights={"a": 2, "b": 1}),
                   MixConfig(strategy="resample", weights={"a": 1, "b": 1, "c": 1}, total=900)):
        one, two = mix(sources, config, seed=5), mix(sources, config, seed=5)
        assert one.rows.tolist() == two.rows.tolist() and one.copy.tolist() == two.copy.tolist()
        other = mix(sources, config, seed=6)
        assert other.rows.tolist() != one.rows.tolist()


def test_apportion_is_exact():
    for total in (0, 1, 7, 99, 1000, 12345):
        for weights in ([0.8, 0.1, 0.1], [0.95, 0.02, 0.03], [1, 1, 1], [3, 0, 1], [0.5, 0.5]):
            w = np.array(weights, dtype=float)
            shares = apportion(total, w)
            assert shares.sum() == total
            assert np.all(np.abs(shares - total * w / w.sum()) < 1)
            assert np.all(shares[w == 0] == 0)


# --- split targets ---------------------------------------------------------------------------


@pytest.mark.parametrize("total", [1, 10, 333, 999, 1000, 2000, 12345])
@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.7, 0.2, 0.1), (0.9, 0.05, 0.05),
                                    (1 / 3, 1 / 3, 1 / 3)])
def test_split_targets_sum_exactly(total, ratios):
    config = SplitConfig(*ratios)
    targets, warnings = split_targets(total, config)
    assert targets.sum() == total and (targets >= 0).all()
    if total < config.floor_min_rows or total * ratios[1] >= config.validation_floor:
        assert np.all(np.abs(targets - total * np.array(ratios)) < 1)
    else:
        assert targets[1] == config.validation_floor
    assert bool(warnings) == (total < 1000 and targets[1] < config.validation_floor)


def test_validation_floor_applies_from_floor_min_rows_and_warns_below():
    config = SplitConfig(train=0.95, validation=0.02, test=0.03)
    targets, warnings = split_targets(2000, config)
    assert targets.tolist() == [1840, 100, 60] and warnings == []
    targets, warnings = split_targets(999, config)
    assert targets.sum() == 999 and targets[1] == 20
    assert len(warnings) == 1 and "validation has 20 rows" in warnings[0]
    assert "1000" in warnings[0]
    # At the threshold the floor takes over, from train.
    targets, warnings = split_targets(1000, config)
    assert targets.tolist() == [870, 100, 30] and warnings == []


def test_validation_floor_respects_an_explicit_zero():
    config = SplitConfig(train=0.9, validation=0.0, test=0.1)
    targets, warnings = split_targets(2000, config)
    assert targets.tolist() == [1800, 0, 200]


# --- assign_splits ----------------------------------------------------------------------------


def _split_of(ids, result) -> dict[str, str]:
    return {i: SPLITS[k] for i, k in zip(ids, result.split.tolist())}


def _greedy_one_unit_at_a_time(unit_source, unit_weight, rank, cells) -> np.ndarray:
    """The split rule as its definition reads: units largest first, then by rank, each to
    the split its source is furthest from filling, ties by priority."""
    left = cells.astype(np.float64)
    out = np.zeros(len(unit_source), dtype=np.int64)
    for u in np.lexsort((rank, -unit_weight)).tolist():
        row = left[unit_source[u]]
        out[u] = min(range(len(SPLITS)), key=lambda k: (-row[k], _PRIORITY[SPLITS[k]]))
        row[out[u]] -= unit_weight[u]
    return out


def test_greedy_splits_sorted_per_run_equal_the_unit_by_unit_rule():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n, sources = int(rng.integers(1, 300)), int(rng.integers(1, 5))
        source = rng.integers(0, sources, n)
        weight = rng.choice([1, 1, 1, 2, 3, 7], n) if trial % 2 else np.ones(n, np.int64)
        rank = rng.permutation(n).astype(np.int64)
        cells = rng.integers(-3, n // sources + 5, (sources, len(SPLITS)))  # ties, overfull
        assert np.array_equal(_greedy_splits(source, weight, rank, cells),
                              _greedy_one_unit_at_a_time(source, weight, rank, cells)), trial
    empty = np.zeros(0, np.int64)
    assert _greedy_splits(empty, empty, empty, np.zeros((0, len(SPLITS)), np.int64)).size == 0


def test_id_ranks_are_keyed_blake2b():
    import hashlib

    ids = ["a", "", "日本語", "row-0001"]
    expected = [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8, key=b"3").digest(),
                               "big") >> 1 for i in ids]
    assert _id_ranks(ids, 3).tolist() == expected
    assert _id_ranks([], 3).tolist() == []


def test_split_is_stratified_by_source():
    counts = {"chat": 1300, "math": 420, "qa": 97, "tiny": 7}
    sources = sources_of(counts, seed=1)
    ids = [f"row{i}" for i in range(len(sources))]
    config = SplitConfig(train=0.8, validation=0.1, test=0.1)
    result = assign_splits(ids, sources, np.ones(len(ids), np.int64), np.zeros((0, 2), np.int64),
                           config, seed=0)
    targets = np.array([result.targets[s] for s in SPLITS])
    assert targets.sum() == len(ids)
    assert np.all(np.abs(targets - len(ids) * np.array([0.8, 0.1, 0.1])) < 1)
    assert result.facts["sizes"] == result.targets and result.warnings == []
    total = sum(counts.values())
    for name, n in counts.items():
        got = result.facts["by_source"][name]
        assert sum(got.values()) == n
        for k, split in enumerate(SPLITS):
            assert abs(got[split] - n * targets[k] / total) <= 1, (name, split, got)


def test_groups_never_straddle_splits():
    rng = random.Random(2)
    n = 600
    ids = [f"r{i}" for i in range(n)]
    sources = [rng.choice(["a", "b"]) for _ in range(n)]
    groups = [f"g{rng.randrange(60)}" if rng.random() < 0.6 else None for _ in range(n)]
    links = _same_value_links(np.array(groups, dtype=object))
    result = assign_splits(ids, sources, np.ones(n, np.int64), links,
                           SplitConfig(0.6, 0.2, 0.2), seed=4)
    by_group = defaultdict(set)
    for g, k in zip(groups, result.split.tolist()):
        if g is not None:
            by_group[g].add(k)
    assert len(by_group) == 60 and all(len(v) == 1 for v in by_group.values())
    # All three splits still get rows, sizes close to target (groups are at most ~10 rows).
    sizes = result.facts["sizes"]
    for split in SPLITS:
        assert abs(sizes[split] - result.targets[split]) <= 15, sizes


def test_units_that_cannot_meet_the_targets_are_warned_with_the_sizes_reached():
    ids = [f"r{i}" for i in range(99)]
    links = np.array([[i, i + k] for i in range(0, 99, 3) for k in (1, 2)])  # 33 units of 3
    result = assign_splits(ids, ["s"] * 99, np.ones(99, np.int64), links,
                           SplitConfig(0.7, 0.2, 0.1), seed=0)
    sizes, targets = result.facts["sizes"], result.targets
    assert targets == {"train": 69, "validation": 20, "test": 10}
    assert all(v % 3 == 0 for v in sizes.values()) and sum(sizes.values()) == 99
    off = [s for s in SPLITS if sizes[s] != targets[s]]
    drift = [w for w in result.warnings if w.startswith("split sizes differ")]
    assert off and len(drift) == 1 and "largest unit: 3 rows" in drift[0]
    assert all(f"{s} {sizes[s]} (target {targets[s]})" in drift[0] for s in off)
    # the small-validation warning gives the size reached, not the target
    assert any(w.startswith(f"validation has {sizes['validation']} rows")
               for w in result.warnings)


def test_weights_count_repeats():
    ids = [f"r{i}" for i in range(100)]
    weights = np.ones(100, np.int64)
    weights[:10] = 3  # ten rows resampled three times: 120 output rows
    result = assign_splits(ids, ["s"] * 100, weights, np.zeros((0, 2), np.int64),
                           SplitConfig(0.5, 0.25, 0.25), seed=0)
    assert sum(result.targets.values()) == 120
    assert result.facts["sizes"] == result.targets == {"train": 60, "validation": 30,
                                                       "test": 30}
    assert result.facts["largest_unit"] == 3


@st.composite
def split_inputs(draw, with_groups: bool = True):
    n = draw(st.integers(1, 80))
    ids = draw(st.lists(st.text("abcdefghij0123456789-", min_size=1, max_size=8),
                        min_size=n, max_size=n, unique=True))
    sources = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n))
    if with_groups:
        groups = draw(st.lists(st.one_of(st.none(), st.sampled_from([f"g{i}" for i in range(8)])),
                               min_size=n, max_size=n))
    else:
        groups = [None] * n
    ratios = draw(st.sampled_from([(0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (0.34, 0.33, 0.33),
                                   (0.9, 0.0, 0.1)]))
    seed = draw(st.integers(0, 2**31))
    perm = draw(st.permutations(list(range(n))))
    return ids, sources, groups, SplitConfig(*ratios), seed, perm


def _assign(ids, sources, groups, config, seed, order):
    links = _same_value_links(np.array([groups[i] for i in order], dtype=object))
    result = assign_splits([ids[i] for i in order], [sources[i] for i in order],
                           np.ones(len(order), np.int64), links, config, seed)
    return {ids[i]: k for i, k in zip(order, result.split.tolist())}, result


@settings(max_examples=120, deadline=None, derandomize=True, database=None)
@given(split_inputs())
def test_split_properties_with_groups(case):
    ids, sources, groups, config, seed, _ = case
    order = list(range(len(ids)))
    first, result = _assign(ids, sources, groups, config, seed, order)
    again, _ = _assign(ids, sources, groups, config, seed, order)
    assert first == again  # deterministic for a seed
    by_group = defaultdict(set)
    for i, g in enumerate(groups):
        if g is not None:
            by_group[g].add(first[ids[i]])
    assert all(len(v) == 1 for v in by_group.values())  # no group straddles
    assert sum(result.facts["sizes"].values()) == len(ids)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(split_inputs(with_groups=False))
def test_split_properties_singletons(case):
    ids, sources, groups, config, seed, perm = case
    first, result = _assign(ids, sources, groups, config, seed, list(range(len(ids))))
    permuted, _ = _assign(ids, sources, groups, config, seed, perm)
    assert permuted == first  # the input order does not matter
    assert result.facts["sizes"] == result.targets  # exact sizes
    assert sum(result.targets.values()) == len(ids)


def test_split_depends_on_the_seed():
    ids = [f"r{i}" for i in range(300)]
    one, _ = _assign(ids, ["a"] * 300, [None] * 300, SplitConfig(), 1, list(range(300)))
    two, _ = _assign(ids, ["a"] * 300, [None] * 300, SplitConfig(), 2, list(range(300)))
    assert one != two
    assert Counter(one.values()) == Counter(two.values())


def test_split_with_groups_is_independent_of_input_order():
    rng = np.random.default_rng(0)
    n = 60
    ids = [f"r{i}" for i in range(n)]
    groups = [None if rng.random() < 0.5 else f"g{rng.integers(25)}" for _ in range(n)]
    sources = ["a"] * n
    config = SplitConfig(train=0.4, validation=0.3, test=0.3)
    base, _ = _assign(ids, sources, groups, config, 0, list(range(n)))
    for _ in range(3):
        permuted, _ = _assign(ids, sources, groups, config, 0, rng.permutation(n).tolist())
        assert permuted == base


# --- leak check ------------------------------------------------------------------------------


def test_leak_check_flags_near_pairs_across_splits_only():
    rows = np.array([0, 2, 3, 5, 8, 9], dtype=np.int64)  # output rows' _idx, sorted
    split = np.array([0, 0, 1, 2, 0, 1], dtype=np.int64)
    ids = ["r0", "r2", "r3", "r5", "r8", "r9"]
    a = np.array([0, 2, 3, 0, 5, 1, 8], dtype=np.int64)
    b = np.array([3, 8, 5, 2, 9, 3, 9], dtype=np.int64)
    sim = np.array([0.85, 0.95, 0.5, 1.0, 0.79, 0.99, 0.8])
    # (0,3) 0.85 train/validation: leak. (2,8) same split. (3,5) below threshold.
    # (0,2) same split. (5,9) below. (1,3): row 1 is not output. (8,9) 0.8: leak.
    found = leak_check(a, b, sim, 0.8, rows, split, ids)
    assert found["leaks"] == 2
    assert found["near_pairs_in_output"] == 4  # (1,3) is near, but row 1 is not output
    assert {(e["a"], e["b"]) for e in found["examples"]} == {("r0", "r3"), ("r8", "r9")}
    example = next(e for e in found["examples"] if e["a"] == "r0")
    assert (example["split_a"], example["split_b"], example["jaccard"]) == \
        ("train", "validation", 0.85)
    same_side = leak_check(a, b, sim, 0.8, rows, np.zeros(6, np.int64), ids)
    assert same_side["leaks"] == 0 and same_side["near_pairs_in_output"] == 4


def test_leak_check_with_no_output_rows():
    a, b = np.array([0], np.int64), np.array([1], np.int64)
    empty = leak_check(a, b, np.array([1.0]), 0.8, np.zeros(0, np.int64),
                       np.zeros(0, np.int64), [])
    assert empty["near_pairs_in_output"] == 0 and empty["leaks"] == 0


# --- end to end -------------------------------------------------------------------------------


def _chat_line(rid: str, user: str, reply: str, **extra) -> str:
    return json.dumps({"id": rid, "messages": [{"role": "user", "content": user},
                                               {"role": "assistant", "content": reply}],
                       **extra}, ensure_ascii=False)


@pytest.mark.slow
def test_run_groups_resample_repeats_and_conserved_counts(ray_local, tmp_path):
    rng = random.Random(9)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 8))) for _ in range(400)]

    def text(k: int) -> str:
        return " ".join(rng.choices(vocab, k=k))

    forum, docs = [], []
    for i in range(240):  # forum threads: several turns of one thread share a group
        forum.append(_chat_line(f"f{i}", text(10) + "?", text(25) + ".", group=f"thread{i // 6}"))
    for i in range(60):  # a small source, resampled with repeats; some rows grouped
        extra = {"group": f"doc{i // 4}"} if i < 20 else {}
        docs.append(_chat_line(f"d{i}", text(10) + "?", text(25) + ".", **extra))
    docs.append("{not json")
    (tmp_path / "forum.jsonl").write_text("\n".join(forum) + "\n", encoding="utf-8")
    (tmp_path / "docs.jsonl").write_text("\n".join(docs) + "\n", encoding="utf-8")
    config = DataConfig(inputs=[InputConfig(path=str(tmp_path / "forum.jsonl")),
                                InputConfig(path=str(tmp_path / "docs.jsonl"))])
    config.mix = MixConfig(strategy="resample", weights={"forum": 1, "docs": 1}, total=300)
    config.split = SplitConfig(train=0.6, validation=0.2, test=0.2)
    result = run(config, tmp_path / "out", progress=False)
    manifest = check_contract(result.out_dir)
    counts = manifest["counts"]
    assert counts["input"] == counts["kept"] - counts["repeats"] + sum(counts["rejected"].values())
    assert counts["input"] == 301 and counts["kept"] == 300
    assert counts["rejected"]["malformed_json"] == 1
    assert counts["rejected"]["mix_surplus"] == 90  # forum: 150 of 240 drawn
    assert counts["repeats"] == 90  # docs: 60 rows, 150 emissions
    assert manifest["mix"]["sources"]["docs"]["repeats"] == 90

    rows = [(split, r) for split in SPLITS for r in read_jsonl(result.out_dir / f"{split}.jsonl")]
    split_of = {r["id"]: split for split, r in rows}
    assert len(split_of) == 300  # every emitted id is distinct
    # Repeats carry #2, #3 ... and sit in their original's split.
    base_id = {i: i.split("#")[0] for i in split_of}
    per_row = Counter(base_id.values())
    assert {n for i, n in per_row.items() if i.startswith("d")} == {2, 3}
    for i, original in base_id.items():
        if i != original:
            assert int(i.split("#")[1]) in (2, 3)
            assert split_of[i] == split_of[original]
    repeated = [r for _, r in rows if "#" in r["id"]]
    assert len(repeated) == 90 and all(r["source"] == "docs" for r in repeated)
    # Groups land in one split, repeats included.
    group_splits = defaultdict(set)
    for split, r in rows:
        if "group" in r:
            group_splits[r["group"]].add(split)
    assert len(group_splits) >= 30 and all(len(v) == 1 for v in group_splits.values())
    # Surplus rows are recorded as such, with their stage.
    surplus = [r for r in read_jsonl(result.out_dir / "rejected.jsonl")
               if r["reason"] == "mix_surplus"]
    assert len(surplus) == 90 and {r["stage"] for r in surplus} == {"mix"}
    assert not {r["id"] for r in surplus} & set(base_id.values())
    # The split sizes match the manifest's targets for the 300 output rows (groups of up
    # to 6 rows and repeated rows are units, so a split may be off by a few).
    assert manifest["split"]["sizes"] == counts["splits"]
    for split, want in {"train": 180, "validation": 60, "test": 60}.items():
        assert manifest["split"]["targets"][split] == want
        assert abs(counts["splits"][split] - want) <= 6, counts["splits"]


@pytest.mark.slow
def test_mixed_export_merges_ranges_in_the_mix_order(ray_local, tmp_path, monkeypatch):
    """The mixed export sorts by ranges: rows from many parts merged in ranges of 7 output
    positions give the same files as one range holding every row, in the mix's order."""
    import pyarrow.parquet as pq

    import data_engine.run as run_module

    rng = random.Random(4)
    vocab = ["".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(300)]

    def text(k: int) -> str:
        return " ".join(rng.choices(vocab, k=k))

    for name, rows in (("big", 120), ("small", 30)):
        lines = [_chat_line(f"{name}{i}", text(8) + "?", text(20) + ".") for i in range(rows)]
        lines.insert(rows // 2, "{not json")  # a rejected row in the middle of each source
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = DataConfig(inputs=[InputConfig(path=str(tmp_path / "big.jsonl")),
                                InputConfig(path=str(tmp_path / "small.jsonl"))])
    config.mix = MixConfig(strategy="resample", weights={"big": 1, "small": 1}, total=200)
    config.ray.shard_rows = 16  # 10 parts: 121 + 31 lines
    tasks: Counter[tuple[int, str]] = Counter()
    real_map_tasks = run_module.map_tasks

    def counted(fn, calls, *args, **kwargs):
        calls = list(calls)
        tasks[merge_rows, fn.__name__] += len(calls)
        return real_map_tasks(fn, calls, *args, **kwargs)

    monkeypatch.setattr(run_module, "map_tasks", counted)
    files = {}
    for merge_rows in (10 ** 9, 7):
        monkeypatch.setattr(run_module, "MERGE_ROWS", merge_rows)
        out = run(config, tmp_path / f"out{merge_rows}", progress=False).out_dir
        files[merge_rows] = {name: (out / f"{name}.jsonl").read_bytes()
                             for name in (*SPLITS, "rejected")}
    assert tasks[10 ** 9, "export_ordered_part"] == tasks[7, "export_ordered_part"] == 10
    assert tasks[10 ** 9, "export_range"] == 1 and tasks[7, "export_range"] >= 30
    assert files[7] == files[10 ** 9]

    stages = out / ".stages"
    ids = {}
    for part in (stages / "clean").glob("rows-*.parquet"):
        ids.update(zip(*pq.read_table(part, columns=["_idx", "id"]).to_pydict().values()))
    emitted = pq.read_table(stages / "mix" / "emissions.parquet").sort_by("_order").to_pylist()
    in_order = [ids[e["_idx"]] + (f"#{e['copy'] + 1}" if e["copy"] else "") for e in emitted]
    assert len(in_order) == 200 and len(set(in_order)) == 200
    for split in SPLITS:
        written = [r["id"] for r in read_jsonl(out / f"{split}.jsonl")]
        assert written and written == [i for i in in_order if i in set(written)]
    rejected = [r["source"]["line"] for r in read_jsonl(out / "rejected.jsonl")]
    assert len(rejected) >= 2


@pytest.mark.slow
def test_run_keeps_a_chat_and_its_shorter_copies_and_rows_sharing_an_id_together(
        ray_local, tmp_path):
    """ShareGPT dumps store one chat at several lengths: 11 of 40 six-turn chats landed in
    another split than their own first exchange (Jaccard ~0.35, so no duplicate pair, and
    the leak check saw nothing). Rows sharing an id (one row per turn of a chat) were
    scattered too, while the warning said they land in one split."""
    rng = random.Random(5)
    letters = "abcdefghijklmnopqrstuvwxyz"

    def text(k: int) -> str:
        return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(3, 8)))
                        for _ in range(k))

    lines = []
    for i in range(40):
        turns = [{"from": "system", "value": "You are helpful."}]
        for _ in range(3):
            turns += [{"from": "human", "value": text(8) + "?"}, {"from": "gpt", "value": text(20)}]
        lines.append(json.dumps({"id": f"chat{i}", "conversations": turns}))
        lines.append(json.dumps({"id": f"first{i}", "conversations": turns[:3]}))
        lines.append(json.dumps({"id": f"two{i}", "conversations": turns[:5]}))
    for i in range(30):  # one row per turn of a conversation, under the conversation's id
        lines.append(_chat_line(f"conv{i}", text(8) + "?", text(20)))
        lines.append(_chat_line(f"conv{i}", text(8) + "?", text(20)))
    (tmp_path / "chats.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = DataConfig(inputs=[InputConfig(path=str(tmp_path / "chats.jsonl"))])
    config.split = SplitConfig(train=0.5, validation=0.25, test=0.25)
    result = run(config, tmp_path / "out", progress=False)
    splits = {split: read_jsonl(result.out_dir / f"{split}.jsonl") for split in SPLITS}
    split_of = {}
    for split, rows in splits.items():
        for r in rows:
            split_of.setdefault(r["id"], set()).add(split)
    assert result.manifest["counts"]["kept"] == 180
    assert all(len(splits[s]) for s in SPLITS)
    for i in range(40):
        assert split_of[f"chat{i}"] == split_of[f"first{i}"] == split_of[f"two{i}"], i
    for i in range(30):
        assert len(split_of[f"conv{i}"]) == 1, i
    assert any(w.startswith("60 kept rows share 30 ids") for w in result.manifest["warnings"])


def test_synthesized_rows_are_linked_to_their_parent_and_siblings():
    """An evolution of a test prompt in train is the test prompt learnt: 35 of 54 kept
    evolutions sat in another split than their seed. Round 2 links through round 1; rows
    of one CRAFT document link to each other (no row has the document's id)."""
    import pyarrow as pa

    ids = ["seed", "evol1", "evol2", "other", "craftA", "craftB", "lone"]
    idx = np.arange(10, 10 + len(ids))
    table = pa.table({
        "_idx": pa.array([10, 11, 12, 13, 14, 15, 16, 99], pa.int64()),  # 99: not in the split
        "key": pa.array([1, 2, 3, 4, 5, 6, 7, 8], pa.int64()),
        "prefixes": pa.array([[], [], [], [], [], [], [4], []], pa.list_(pa.int64())),
        "parent_id": pa.array([None, "seed", "evol1", None, "doc7", "doc7", None, "seed"])})
    pairs = {tuple(sorted(p)) for p in lineage_pairs(idx, ids, table).tolist()}
    # evol1 -> seed, evol2 -> evol1, craftA ~ craftB, lone's turns start with other's
    assert pairs == {(0, 1), (1, 2), (4, 5), (3, 6)}
