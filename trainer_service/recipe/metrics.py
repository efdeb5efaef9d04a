"""Training telemetry: metrics.jsonl, the overfitting alarm and the HTML loss report.

The alarm itself is a pure function over (step, train loss, eval loss) points; the callbacks
only hold state and convert Trainer logs into those points and into JSONL lines.
"""

from __future__ import annotations

import base64
import html
import io
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation: the step, the latest logged train loss and the validation loss."""

    step: int
    train_loss: float
    eval_loss: float


def overfitting_alarm(history: list[EvalPoint], patience: int,
                      train_loss_floor: float) -> str | None:
    """Says why the run is overfitting, or None.

    Two signs of overfitting: eval loss rising for `patience` evaluations in a row while
    train loss falls; or train loss under `train_loss_floor` with the eval-train gap widening
    and eval loss no better than its best so far (the failed run reached 0.25 train loss with
    nobody watching validation). While eval loss still improves, a low train loss alone does
    not stop the run: the model is still getting better on held-out rows.
    """
    if len(history) >= patience + 1:
        window = history[-(patience + 1):]
        eval_rising = all(b.eval_loss > a.eval_loss for a, b in zip(window, window[1:]))
        train_falling = window[-1].train_loss < window[0].train_loss
        if eval_rising and train_falling:
            return (f"overfitting: eval loss rose for {patience} evaluations "
                    f"({window[0].eval_loss:.4f} -> {window[-1].eval_loss:.4f}, steps "
                    f"{window[0].step}-{window[-1].step}) while train loss fell "
                    f"({window[0].train_loss:.4f} -> {window[-1].train_loss:.4f})")
    if len(history) >= 2:
        prev, last = history[-2], history[-1]
        gap_prev = prev.eval_loss - prev.train_loss
        gap_last = last.eval_loss - last.train_loss
        best = min(p.eval_loss for p in history[:-1])
        if last.train_loss < train_loss_floor and gap_last > gap_prev and gap_last > 0 \
                and last.eval_loss >= best:
            return (f"overfitting: train loss {last.train_loss:.4f} < {train_loss_floor} at step "
                    f"{last.step}, the eval-train gap widened ({gap_prev:.4f} -> "
                    f"{gap_last:.4f}) and eval loss {last.eval_loss:.4f} is no better than its "
                    f"best ({best:.4f})")
    return None


def _memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class MetricsCallback(TrainerCallback):
    """Appends one JSON line per Trainer log event to RUN_DIR/metrics.jsonl."""

    def __init__(self, path: Path, log=print, on_row=None):
        self.path = Path(path)
        self.log = log
        self.on_row = on_row
        self._last = None  # (time, tokens seen) at the previous log

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run rewrites history after its checkpoint's step, so no step appears twice.
        if self.path.is_file():
            kept = [line for line in self.path.read_text(encoding="utf-8").split("\n")
                    if line.strip() and json.loads(line)["step"] <= state.global_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._last = (time.monotonic(), state.num_input_tokens_seen or 0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs and "eval_loss" not in logs:
            return  # the end-of-training summary duplicates these
        now, tokens = time.monotonic(), state.num_input_tokens_seen or 0
        rate = None
        if self._last is not None and "loss" in logs and now > self._last[0]:
            rate = (tokens - self._last[1]) / (now - self._last[0])
        if "loss" in logs:
            self._last = (now, tokens)
        row = {"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
               "loss": logs.get("loss"),
               "eval_loss": logs.get("eval_loss"), "learning_rate": logs.get("learning_rate"),
               "tokens_per_s": rate, "tokens_seen": tokens, "memory_mb": round(_memory_mb(), 1)}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.on_row is not None:
            self.on_row(row)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                          if isinstance(v, float) and k in ("loss", "eval_loss", "learning_rate"))
        self.log(f"step {state.global_step}: {shown}")


class OverfittingCallback(TrainerCallback):
    """Raises the overfitting alarm as a warning and stops training (the best checkpoint,
    kept by load_best_model_at_end, is what the run returns)."""

    def __init__(self, patience: int, train_loss_floor: float, log=print):
        self.patience = patience
        self.floor = train_loss_floor
        self.log = log
        self.history: list[EvalPoint] = []
        self.warnings: list[str] = []
        self._train_loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        """On a resume, the evaluations before the checkpoint (its trainer state's log
        history) count: the alarm's window does not restart from zero."""
        self.history, self._train_loss = [], None
        for entry in state.log_history:
            if "loss" in entry:
                self._train_loss = float(entry["loss"])
            if "eval_loss" in entry and self._train_loss is not None:
                self.history.append(EvalPoint(int(entry.get("step", 0)), self._train_loss,
                                              float(entry["eval_loss"])))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._train_loss = float(logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or "eval_loss" not in metrics or self._train_loss is None:
            return
        if self.history and self.history[-1].step == state.global_step:
            return  # evaluated again at the same step (a closing summary): no new evidence
        self.history.append(EvalPoint(state.global_step, self._train_loss,
                                      float(metrics["eval_loss"])))
        reason = overfitting_alarm(self.history, self.patience, self.floor)
        if reason and reason not in self.warnings:
            self.warnings.append(reason)
            self.log(f"WARNING {reason}; stopping at the best checkpoint")
            control.should_training_stop = True


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")
            if line.strip()]


def loss_plot_png(rows: list[dict]) -> bytes:
    """A PNG of train and eval loss against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        ax.plot(*zip(*evals), label="eval loss", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(run_dir: Path, warnings: list[str], summary: dict) -> Path:
    """Writes RUN_DIR/report.html: the loss plot, warnings and the run's summary."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / METRICS_FILE)
    png = base64.b64encode(loss_plot_png(rows)).decode("ascii")
    warn_html = "".join(f"<li>{html.escape(w)}</li>" for w in warnings) or "<li>none</li>"
    summary_html = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                           for k, v in summary.items())
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>tunesmith training report"
        "</title></head><body><h1>Training report</h1>"
        f"<img alt='train and eval loss' src='data:image/png;base64,{png}'>"
        f"<h2>Warnings</h2><ul>{warn_html}</ul><h2>Summary</h2><table>{summary_html}</table>"
        "</body></html>")
    out = run_dir / REPORT_FILE
    out.write_text(page, encoding="utf-8")
    return out
