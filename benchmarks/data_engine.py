"""Clean + dedup benchmark: tunesmith against a straightforward single-process pipeline.

Run:
    .venv/bin/python benchmarks/data_engine.py --rows 200000
    .venv/bin/python benchmarks/data_engine.py --rows 1000000 --skip-reference

Generates N chat rows with planted exact and near duplicates, tag lists and degenerate
replies (benchmarks/planted.py), then runs on the same file, each as its own process:

- tunesmith: `tunesmith data run` on an embedded Ray (`--num-cpus`), outputs included;
- reference: `datasets.Dataset.from_json` -> `map(batched=True)` through the project's clean
  filters -> `filter` -> exact dedup with a dict of the project's exact keys -> near dedup
  with datasketch MinHash (128 permutations over the same padded character 5-grams of the
  project's near text) and MinHashLSH at 0.8, keeping the first row of each match, with no
  exact-Jaccard confirmation. The exact keys and near texts come from the project's batch
  form (`batch_texts`, 1000 rows a call): its one-row helpers cost ~0.4 ms a call.

Printed: rows/s of each (N / wall time of the whole process) and their ratio; the same to
the end of tunesmith's dedup stage (from its start until the stage's completion marker was
written), which is the reference's scope: the whole-run ratio also charges tunesmith its mix,
split, JSONL and `hf/` outputs and report, which the reference does not make. Then peak
memory, clean reject counts per reason, whether the planted defects were caught, and dedup
precision and recall against the planted clusters (a cluster of k rows is right when k-1 of
them are removed as duplicates). `results.json` in the workdir holds the same numbers.

Each side's time comes from a run that nothing samples. tunesmith is timed before the
reference and again after it, and its time is the median of those runs (of two, their
mean): this machine's speed drifts by 10-20% within minutes, which the reference's minutes
average over and one 20 s run does not. Memory is measured apart from the timed runs:
tunesmith runs a second time while its process tree's PSS is sampled 5 times a second (so
Ray's shared object store counts once), because reading `/proc/PID/smaps_rollup` of its ~10
processes costs ~5 ms a process, 3.4 s of CPU over a 200k-row run on 2 cores, which would be
charged to tunesmith's time. The reference is one process, so the kernel's peak RSS for it,
taken from its timed run, is its memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    # As a script this folder leads sys.path, and this very file would shadow the package.
    sys.path[0] = str(ROOT)

from benchmarks.planted import NGRAM, generate  # noqa: E402
from data_engine.stages import MARKER  # noqa: E402

DEDUP_REASONS = {"exact_duplicate": "exact", "near_duplicate": "near"}
KINDS = ("exact", "near")
NUM_PERM = 128
THRESHOLD = 0.8
SAMPLE_SECONDS = 0.2
GIB = 1 << 30


# --- the reference pipeline (runs in its own process) -----------------------------------------

def reference(rows_path: Path, out_dir: Path) -> None:
    """datasets + the project's clean filters + a dict and datasketch LSH, in this process.

    Writes `rejected.jsonl` ({id, reason, duplicate_of?} per dropped row) and `summary.json`
    (counts and seconds per phase) into ``out_dir``.
    """
    import datasets
    import pyarrow as pa
    from datasketch import MinHash, MinHashLSH

    from data_engine.config import CleanConfig
    from data_engine.dedup.minhash import ngram_strings
    from data_engine.dedup.text import batch_texts
    from data_engine.pipeline.clean import clean_batch
    from data_engine.readers.formats import to_messages
    from data_engine.schema import WORK_SCHEMA

    datasets.disable_progress_bars()
    config = CleanConfig()
    phases: dict[str, float] = {}

    def clean(batch: dict[str, list[Any]], indices: list[int]) -> pa.Table:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        n = len(rows)
        columns = {"id": batch["id"], "messages": [to_messages(row, "auto") for row in rows],
                   "source": batch["source"], "tags": [[] for _ in rows],
                   "_file": [str(rows_path)] * n, "_line": [i + 1 for i in indices],
                   "_raw": [json.dumps(row, ensure_ascii=False) for row in rows]}
        # Any other column of the row schema (_reason, _stage, ...) starts out null.
        table = pa.table({f.name: columns.get(f.name, [None] * n) for f in WORK_SCHEMA},
                         schema=WORK_SCHEMA)
        return clean_batch(table, config).select(["id", "messages", "_reason"])

    start = time.perf_counter()
    ds = datasets.Dataset.from_json(str(rows_path), cache_dir=str(out_dir / "hf-cache"))
    phases["load"] = time.perf_counter() - start
    cleaned = ds.map(clean, batched=True, with_indices=True, remove_columns=ds.column_names)
    kept = cleaned.filter(lambda reasons: [r is None for r in reasons], batched=True,
                          input_columns="_reason")
    phases["clean"] = time.perf_counter() - start - phases["load"]
    seen: dict[int, str] = {}  # exact key -> first row
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)

    def duplicate(rid: str, key: int, near: str) -> tuple[str, str] | None:
        """(reason, earlier row) when the row repeats an earlier one; else remembers it."""
        if key in seen:
            return "exact_duplicate", seen[key]
        seen[key] = rid
        minhash = MinHash(num_perm=NUM_PERM)
        minhash.update_batch([s.encode("utf-8") for s in ngram_strings(near, NGRAM)])
        if matches := lsh.query(minhash):
            return "near_duplicate", matches[0]
        lsh.insert(rid, minhash)
        return None

    rejected: Counter[str] = Counter()
    with (out_dir / "rejected.jsonl").open("w", encoding="utf-8") as out:
        for rid, reason in zip(cleaned["id"], cleaned["_reason"]):
            if reason is not None:
                rejected[reason] += 1
                out.write(json.dumps({"id": rid, "reason": reason}) + "\n")
        for batch in kept.with_format("arrow").iter(batch_size=1000):
            texts = batch_texts(batch.column("messages"))
            for rid, key, near in zip(batch.column("id").to_pylist(), texts.exact_keys.tolist(),
                                      texts.near):
                if found := duplicate(rid, key, near):
                    rejected[found[0]] += 1
                    out.write(json.dumps({"id": rid, "reason": found[0],
                                          "duplicate_of": found[1]}) + "\n")
    phases["dedup"] = time.perf_counter() - start - phases["load"] - phases["clean"]
    summary = {"counts": {"input": len(ds), "kept": len(ds) - sum(rejected.values()),
                          "rejected": dict(rejected)},
               "phases": {name: round(s, 2) for name, s in phases.items()}}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


# --- measuring a process tree -----------------------------------------------------------------

@dataclass
class Timed:
    """One side's timed run: wall time, and the kernel's peak RSS of the process (or of a
    child it reaped, whichever is larger)."""

    returncode: int
    seconds: float
    max_rss: int  # bytes
    load_before: float  # the machine's 1-minute load average at the start: others' work
    started: float  # the wall clock (time.time()) as it was started
    # tunesmith: seconds from its start until its dedup stage was stored (the reference's
    # scope: load, clean and dedup); None for the reference, whose whole run is that
    through_dedup: float | None = None


@dataclass
class Memory:
    """Peak memory of a run whose process tree was sampled, bytes."""

    seconds: float  # that run's wall time, sampling included
    peak_pss: int  # PSS summed over the process and all its descendants
    peak_rss: int  # RSS of the largest single process
    peak_processes: int
    at_peak: list[tuple[str, int]]  # (process, PSS) at the peak-PSS sample, largest first


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants, by the parent links in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in () may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _memory(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in bytes; zeros when it is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, rss


def _label(pid: int) -> str:
    """A process's name for the peak breakdown: Ray workers name their task (`ray::...`)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [w.decode(errors="replace") for w in argv if w]
    named = [w for w in words if not w.startswith("-") and not w.endswith("python")
             and "python3" not in w]
    return Path(named[0]).name[:40] if named else "?"


def run_timed(command: list[str], log: Path) -> Timed:
    """Runs ``command`` (output to ``log``) with nothing sampling it."""
    load = os.getloadavg()[0]
    with log.open("w", encoding="utf-8") as out:
        started = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Timed(proc.returncode, seconds, usage.ru_maxrss * 1024, load, started)


def run_sampled(command: list[str], log: Path) -> tuple[int, Memory]:
    """Runs ``command`` (output to ``log``), sampling its process tree's memory as it runs;
    its exit status and what was measured."""
    peak_pss = peak_rss = peak_processes = 0
    at_peak: list[tuple[str, int]] = []
    with log.open("w", encoding="utf-8") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        while proc.poll() is None:
            tree = _process_tree(proc.pid)
            usage = [_memory(pid) for pid in tree]
            if sum(pss for pss, _ in usage) > peak_pss:
                peak_pss = sum(pss for pss, _ in usage)
                at_peak = sorted(((_label(pid), pss) for pid, (pss, _) in zip(tree, usage)),
                                 key=lambda item: -item[1])
            peak_rss = max(peak_rss, max(rss for _, rss in usage))
            peak_processes = max(peak_processes, len(tree))
            time.sleep(SAMPLE_SECONDS)
        seconds = time.perf_counter() - start
    return proc.returncode, Memory(seconds, peak_pss, peak_rss, peak_processes, at_peak)


# --- the two sides ----------------------------------------------------------------------------

@dataclass
class Side:
    """One side's measurements and what it removed."""

    name: str
    runs: list[Timed]  # tunesmith: before and after the reference, which takes 10x as long
    memory: Memory | None  # tunesmith's sampled run; the reference has the kernel's peak RSS
    removed: dict[str, tuple[str, str | None]]  # id -> (reason, duplicate_of)
    counts: dict[str, Any]
    phases: dict[str, float]  # seconds per stage or phase

    @property
    def seconds(self) -> float:
        """The median of the timed runs (of two: their mean)."""
        return statistics.median(run.seconds for run in self.runs)

    @property
    def through_dedup(self) -> float:
        """The median of the timed runs' seconds from the start to the end of dedup (the
        reference: its whole run, which ends with dedup)."""
        return statistics.median(run.seconds if run.through_dedup is None
                                 else run.through_dedup for run in self.runs)


def _removed(rejected: Path) -> dict[str, tuple[str, str | None]]:
    """id -> (reason, duplicate_of) from a rejected.jsonl."""
    with rejected.open(encoding="utf-8") as f:
        rows = (json.loads(line) for line in f if line.strip())
        return {r["id"]: (r["reason"], r.get("duplicate_of")) for r in rows}


def _check(name: str, returncode: int, log: Path) -> None:
    if returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"{name} failed (exit {returncode}); end of {log}:\n{tail}")


def _tunesmith_command(rows_path: Path, workdir: Path, num_cpus: int, out: Path) -> list[str]:
    """The `tunesmith data run` command into ``out``, which it empties first (stage outputs
    of an earlier run would be reused), with its config file written."""
    config = workdir / "tunesmith.yaml"
    config.write_text(f"ray:\n  num_cpus: {num_cpus}\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    return [str(Path(sys.executable).with_name("tunesmith")), "data", "run",
            "--input", str(rows_path), "--out", str(out), "--config", str(config),
            "--no-progress"]


def time_tunesmith(rows_path: Path, workdir: Path, num_cpus: int, run: int) -> Timed:
    """One timed run of tunesmith into ``workdir / "tunesmith"``."""
    log = workdir / f"tunesmith-{run}.log"
    out = workdir / "tunesmith"
    timed = run_timed(_tunesmith_command(rows_path, workdir, num_cpus, out), log)
    _check("tunesmith", timed.returncode, log)
    # The dedup stage's completion marker is written as the stage ends (data_engine.stages)
    marker = out / ".stages" / "dedup" / MARKER
    timed.through_dedup = marker.stat().st_mtime - timed.started
    return timed


def run_tunesmith(rows_path: Path, workdir: Path, num_cpus: int) -> Side:
    """tunesmith timed, then again with its memory sampled (into a folder removed after)."""
    timed = time_tunesmith(rows_path, workdir, num_cpus, 1)
    sampled_out, sampled_log = workdir / "tunesmith-sampled", workdir / "tunesmith-sampled.log"
    returncode, memory = run_sampled(
        _tunesmith_command(rows_path, workdir, num_cpus, sampled_out), sampled_log)
    _check("tunesmith (memory run)", returncode, sampled_log)
    shutil.rmtree(sampled_out, ignore_errors=True)
    out = workdir / "tunesmith"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    phases = {s["name"]: s["seconds"] for s in manifest.get("stages", [])}
    return Side("tunesmith", [timed], memory, _removed(out / "rejected.jsonl"),
                manifest["counts"], phases)


def run_reference(rows_path: Path, workdir: Path) -> Side:
    out = workdir / "reference"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--reference-run",
               str(rows_path), str(out)]
    log = workdir / "reference.log"
    timed = run_timed(command, log)
    _check("reference", timed.returncode, log)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return Side("reference", [timed], None, _removed(out / "rejected.jsonl"), summary["counts"],
                summary["phases"])


# --- scoring ----------------------------------------------------------------------------------

@dataclass
class Score:
    correct: int = 0  # per cluster: min(members removed as duplicates, k - 1)
    expected: int = 0  # per cluster: k - 1
    removed: int = 0  # rows removed as duplicates (in clusters of this kind, or outside any
    #                   cluster under this kind's reason)
    linked: int = 0  # removed cluster members whose duplicate_of is in the same cluster

    @property
    def precision(self) -> float | None:
        return self.correct / self.removed if self.removed else None

    @property
    def recall(self) -> float | None:
        return self.correct / self.expected if self.expected else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "precision": self.precision, "recall": self.recall}


def score_dedup(truth: dict[str, Any], side: Side) -> dict[str, Score]:
    """Precision and recall of the side's duplicate removals against the planted clusters."""
    dups = {rid for rid, (reason, _) in side.removed.items() if reason in DEDUP_REASONS}
    scores = {kind: Score() for kind in KINDS}
    members: set[str] = set()
    for cluster in truth["clusters"]:
        ids = cluster["ids"]
        members.update(ids)
        removed = [rid for rid in ids if rid in dups]
        score = scores[cluster["kind"]]
        score.correct += min(len(removed), len(ids) - 1)
        score.expected += len(ids) - 1
        score.removed += len(removed)
        score.linked += sum(side.removed[rid][1] in ids for rid in removed)
    for rid in dups - members:
        scores[DEDUP_REASONS[side.removed[rid][0]]].removed += 1
    scores["all"] = Score(*(sum(getattr(s, f) for s in scores.values())
                            for f in ("correct", "expected", "removed", "linked")))
    return scores


def clean_rejects(side: Side) -> Counter[str]:
    return Counter(reason for reason, _ in side.removed.values() if reason not in DEDUP_REASONS)


def defects_caught(truth: dict[str, Any], side: Side) -> dict[str, Any]:
    """Per planted defect kind: rows rejected with that reason; and clean rejects of rows
    planted as nothing (false alarms)."""
    out: dict[str, Any] = {}
    planted: set[str] = set()
    for kind, ids in truth["defects"].items():
        planted.update(ids)
        out[kind] = {"planted": len(ids),
                     "caught": sum(side.removed.get(rid, ("",))[0] == kind for rid in ids)}
    out["unplanted_clean_rejects"] = sum(
        1 for rid, (reason, _) in side.removed.items()
        if reason not in DEDUP_REASONS and rid not in planted)
    return out


# --- report -----------------------------------------------------------------------------------

def _side_result(truth: dict[str, Any], side: Side, rows: int) -> dict[str, Any]:
    m = side.memory
    memory = {"peak_pss_bytes": None,
              "peak_rss_largest_process_bytes": max(run.max_rss for run in side.runs),
              "sampled_seconds": None, "peak_processes": 1, "at_peak": []}
    if m is not None:
        memory = {"peak_pss_bytes": m.peak_pss, "peak_rss_largest_process_bytes": m.peak_rss,
                  "sampled_seconds": round(m.seconds, 2), "peak_processes": m.peak_processes,
                  "at_peak": [[label, round(pss / GIB, 3)] for label, pss in m.at_peak[:8]]}
    return {"seconds": round(side.seconds, 2), "rows_per_s": round(rows / side.seconds, 1),
            "runs_seconds": [round(run.seconds, 2) for run in side.runs],
            "through_dedup_seconds": round(side.through_dedup, 2),
            "through_dedup_rows_per_s": round(rows / side.through_dedup, 1),
            "runs_through_dedup_seconds": [round(run.through_dedup, 2) for run in side.runs
                                           if run.through_dedup is not None],
            "load_before": [run.load_before for run in side.runs], **memory,
            "counts": side.counts, "phases": side.phases,
            "clean_rejects": dict(sorted(clean_rejects(side).items())),
            "defects": defects_caught(truth, side),
            "dedup": {k: s.to_dict() for k, s in score_dedup(truth, side).items()}}


def _gib(value: int) -> str:
    return f"{value / GIB:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_report(results: dict[str, Any]) -> None:
    sides: dict[str, dict[str, Any]] = results["sides"]
    names = list(sides)
    c = results["planted"]
    jac, base = results["near_copy_jaccard"], results["base_pair_jaccard"]
    print(f"\nrows: {results['rows']:,} (seed {results['seed']})  planted: exact copies "
          f"{c['exact_copies']:,} in {c['exact_clusters']:,} clusters, near copies "
          f"{c['near_copies']:,} in {c['near_clusters']:,}, tag_list {c['tag_list']:,}, "
          f"degenerate_repetition {c['degenerate_repetition']:,}")
    stats = "".join(f"{k} {jac[k]}, " for k in ("min", "p05", "median") if k in jac)
    print(f"near copies' exact Jaccard to their original: {stats}below 0.8: {jac['below_0.8']}; "
          f"random base pairs: max {base.get('max', '-')}, mean {base.get('mean', '-')}")

    def row(label: str, values: list[str]) -> None:
        print(f"{label:<34}" + "".join(f"{v:>18}" for v in values))

    row("", names)
    row("load average at start", [", ".join(f"{x:.1f}" for x in sides[n]["load_before"])
                                  for n in names])
    row("wall time, whole process (s)", [f"{sides[n]['seconds']:,.1f}" for n in names])
    row("  each timed run (s)", [", ".join(f"{x:,.1f}" for x in sides[n]["runs_seconds"])
                                 for n in names])
    row("rows/s", [f"{sides[n]['rows_per_s']:,.0f}" for n in names])
    row("to the end of dedup (s)", [f"{sides[n]['through_dedup_seconds']:,.1f}"
                                    for n in names])
    row("  each timed run (s)", [", ".join(f"{x:,.1f}" for x in
                                           sides[n]["runs_through_dedup_seconds"]) or "-"
                                 for n in names])
    row("rows/s to the end of dedup", [f"{sides[n]['through_dedup_rows_per_s']:,.0f}"
                                       for n in names])
    row("wall time, memory sampled (s)",
        ["-" if sides[n]["sampled_seconds"] is None else f"{sides[n]['sampled_seconds']:,.1f}"
         for n in names])
    # a one-process side's peak memory is its RSS, from the kernel
    row("peak memory (GiB)", [f"{_gib(sides[n]['peak_pss_bytes'])} PSS of tree"
                              if sides[n]["peak_pss_bytes"] is not None else
                              f"{_gib(sides[n]['peak_rss_largest_process_bytes'])} RSS"
                              for n in names])
    row("peak RSS, largest process (GiB)",
        [_gib(sides[n]["peak_rss_largest_process_bytes"]) for n in names])
    row("kept rows", [f"{sides[n]['counts']['kept']:,}" for n in names])
    for kind in (*KINDS, "all"):
        row(f"dedup {kind}: precision / recall",
            [f"{_pct(sides[n]['dedup'][kind]['precision'])} / "
             f"{_pct(sides[n]['dedup'][kind]['recall'])}" for n in names])
    row("  removed as duplicates",
        [f"{sides[n]['dedup']['all']['removed']:,}" for n in names])
    row("  duplicate_of in the same cluster",
        [f"{sides[n]['dedup']['all']['linked']:,}" for n in names])
    reasons = sorted({r for n in names for r in sides[n]["clean_rejects"]})
    for reason in reasons:
        row(f"clean reject: {reason}", [f"{sides[n]['clean_rejects'].get(reason, 0):,}"
                                        for n in names])
    for kind in ("tag_list", "degenerate_repetition"):
        row(f"planted {kind} caught",
            [f"{sides[n]['defects'][kind]['caught']:,} / {sides[n]['defects'][kind]['planted']:,}"
             for n in names])
    row("clean rejects of unplanted rows",
        [f"{sides[n]['defects']['unplanted_clean_rejects']:,}" for n in names])
    for n in names:
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in sides[n]["phases"].items())
        print(f"{n} phases: {phases}")
        if heaviest := ", ".join(f"{label} {gib:.2f}" for label, gib in sides[n]["at_peak"][:5]):
            print(f"{n} at peak PSS (GiB): {heaviest}")
    if "ratio" in results:
        print(f"ratio, tunesmith rows/s / reference rows/s: {results['ratio']:.2f}x "
              "(tunesmith's whole run: its split, JSONL and hf/ outputs and report included)")
        print("ratio to the end of dedup (the reference's scope: load, clean, dedup): "
              f"{results['ratio_through_dedup']:.2f}x")
        print(f"clean reject counts {'match' if results['clean_rejects_match'] else 'DIFFER'}")


# --- main -------------------------------------------------------------------------------------

def benchmark(rows: int, seed: int, workdir: Path, num_cpus: int, skip_reference: bool
              ) -> dict[str, Any]:
    """Generates the rows, runs both sides on them and scores them; the results as JSON."""
    start = time.perf_counter()
    rows_path, truth_path = generate(rows, workdir / "data", seed)
    print(f"generated {rows:,} rows in {time.perf_counter() - start:.1f} s: {rows_path}",
          flush=True)
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    sides = [run_tunesmith(rows_path, workdir, num_cpus)]
    print(f"tunesmith: {sides[0].seconds:.1f} s ({sides[0].memory.seconds:.1f} s while "
          "its memory was sampled)", flush=True)
    if not skip_reference:
        sides.append(run_reference(rows_path, workdir))
        print(f"reference: {sides[1].seconds:.1f} s", flush=True)
        # The machine's speed drifts over minutes: tunesmith is timed again after the
        # reference, and the median of its runs is taken (of two: their mean).
        sides[0].runs.append(time_tunesmith(rows_path, workdir, num_cpus, 2))
        print(f"tunesmith again: {sides[0].runs[-1].seconds:.1f} s", flush=True)
    results: dict[str, Any] = {
        "rows": rows, "seed": seed, "num_cpus": num_cpus, "planted": truth["counts"],
        "near_copy_jaccard": truth["near_copy_jaccard"],
        "base_pair_jaccard": truth["base_pair_jaccard"],
        "sides": {side.name: _side_result(truth, side, rows) for side in sides},
    }
    if not skip_reference:
        ts, ref = results["sides"]["tunesmith"], results["sides"]["reference"]
        results["ratio"] = round(ts["rows_per_s"] / ref["rows_per_s"], 3)
        results["ratio_through_dedup"] = round(
            ts["through_dedup_rows_per_s"] / ref["through_dedup_rows_per_s"], 3)
        results["clean_rejects_match"] = ts["clean_rejects"] == ref["clean_rejects"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path,
                        help="keep rows, truth, outputs and logs here (default: a temp dir)")
    parser.add_argument("--skip-reference", action="store_true",
                        help="tunesmith only (the reference takes minutes at 1M rows)")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs for tunesmith's Ray")
    parser.add_argument("--reference-run", nargs=2, type=Path, metavar=("ROWS", "OUT"),
                        help=argparse.SUPPRESS)  # the reference's own process
    args = parser.parse_args()
    if args.reference_run:
        reference(*args.reference_run)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ts-dedup-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = benchmark(args.rows, args.seed, workdir.resolve(), args.num_cpus,
                            args.skip_reference)
        (workdir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        print_report(results)
        if args.workdir:
            print(f"files: {workdir}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
