"""`tunesmith train run`: preflight -> QLoRA SFT -> merge -> parity -> sanity generation
[-> GGUF export, when the spec's `export.gguf` names forms].

Every step writes what it found into the run folder before the next one starts, so a
failed run shows where and why: `preflight.json`, `metrics.jsonl` + `report.html`,
`adapter/`, `merged/`, `verify.json`, `gguf/export.json`, and `run.json` (status, error
with code, message and field, best checkpoint, metrics, warnings, every artifact path).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from trainer_service.recipe.chat_format import (ChatFormatError, align_stop_tokens,
                                                normalize_messages, readable_messages,
                                                resolve_template, row_parts)
from trainer_service.recipe.errors import PreflightError, RecipeError, VerifyError
from trainer_service.recipe.hooks import RecipeStopped, RunHooks, check_stop
from trainer_service.recipe.postflight import (base_dtype, check_parity, free_device_memory,
                                               merge_adapter, sanity_generate)
from trainer_service.recipe.preflight import (check_lora_targets, read_embedding_rows,
                                              run_preflight)
from trainer_service.recipe.spec import TrainSpec
from trainer_service.recipe.train import (CHECKPOINTS_DIR, TRAIN_RESULT, choose_attention,
                                          read_split, train)

SANITY_PROMPTS = 10
# The sanity budget: 1.5x the 95th percentile of the training replies' lengths (a model that
# learned to stop ends within its data's lengths), at least 64 and at most 1,024 tokens.
BUDGET_FACTOR, BUDGET_MIN, BUDGET_MAX = 1.5, 64, 1024


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2, default=str),
                    encoding="utf-8")


def _base_unavailable(spec: TrainSpec, exc: Exception) -> PreflightError:
    """A base model that does not load, as the run's error rather than a traceback."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return PreflightError(
        "base_model_unavailable", f"{spec.base_model!r} does not load: {first}", "base_model",
        "give a local model folder (config.json, tokenizer files, safetensors) or a hub id "
        "this machine can download (a gated one, such as Llama's or Gemma's, with HF_TOKEN or "
        "`hf auth login` from an account that accepted its license)")


def _check_inputs(spec: TrainSpec) -> None:
    """The dataset folder and a local base model's folder exist, before anything loads."""
    dataset = Path(spec.dataset)
    fix = ("give a data engine output folder (train.jsonl, validation.jsonl; `tunesmith data "
           "run` writes one); a relative path in a spec starts at the spec's folder")
    if not dataset.is_dir():
        raise PreflightError("dataset_missing", f"{dataset} is not a folder", "dataset", fix)
    if not (dataset / "train.jsonl").is_file():
        raise PreflightError("no_train_rows", f"{dataset} has no train.jsonl", "dataset", fix)
    if not (dataset / "validation.jsonl").is_file() and not spec.allow_no_validation:
        raise PreflightError(
            "no_validation", f"{dataset} has no validation.jsonl, so overfitting cannot be seen "
            "(the founding run fell from loss 2.85 to 0.25 unnoticed)", "dataset.validation",
            "give the dataset a validation split (the data engine's split stage makes one), or "
            "set allow_no_validation: true")
    model = Path(spec.base_model)
    if (model.is_absolute() or spec.base_model.startswith(".")) and not model.is_dir():
        raise PreflightError("base_model_unavailable", f"{spec.base_model} is not a folder",
                             "base_model", "give a local model folder or a hub id")


def _preflight_model(spec: TrainSpec) -> tuple[Any, str]:
    """The base's embedding matrices for the stop-token check (read alone from its
    safetensors, whatever its size), or its config and why the check cannot run."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(spec.base_model)
    except (OSError, ValueError) as exc:
        raise _base_unavailable(spec, exc) from None
    folder = spec.base_model
    if not Path(folder).is_dir():
        # a hub id: its safetensors into the hub cache now, where training loads them from
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(spec.base_model, allow_patterns=["*.safetensors",
                                                                        "*.json"])
        except Exception as exc:  # offline, gated, no such repo: the check cannot run
            return config, (f"{spec.base_model}'s weights could not be fetched "
                            f"({type(exc).__name__}); download it and pass the folder")
    try:
        return read_embedding_rows(folder, config), ""
    except LookupError as exc:
        return config, str(exc)


SEEN_PROMPTS = ("sanity: no test or validation rows, so the sanity generation runs on train "
                "rows, which the model has seen: stopping is still checked, generalisation "
                "is not")


def _prompts(dataset: Path) -> tuple[list[Any], str | None]:
    """Held-out conversations up to their last assistant turn, and up to their first tool
    call (its `calls` set, for the call check): test rows, else validation, else (a dataset
    of train rows only, allow_no_validation) train rows, with a warning."""
    split, warning = "test", None
    rows = read_split(dataset, split)
    if not rows:
        split, rows = "validation", read_split(dataset, "validation")
    if not rows:
        split, rows, warning = "train", read_split(dataset, "train"), SEEN_PROMPTS
    prompts: list[Any] = []
    for number, row in enumerate(rows, 1):
        messages, tools = row_parts(row)
        try:  # earlier tool calls and results are kept
            messages = readable_messages(messages)
        except ChatFormatError as err:
            name = row.get("id") if isinstance(row, dict) and row.get("id") else number
            raise PreflightError(err.code, f"{split} row {name}: {err.message}", "dataset",
                                 err.fix) from err
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i]
        # the row's first tool call (rows end with a text reply: their calls sit inside),
        # and its last assistant turn
        cuts = [i for i in turns if messages[i].get("tool_calls")][:1] + turns[-1:]
        for cut in dict.fromkeys(cuts):
            calls = messages[cut].get("tool_calls")
            prompt = messages[:cut]
            prompts.append({"messages": prompt, "tools": tools, "calls": calls}
                           if tools or calls else prompt)
        if len(prompts) >= SANITY_PROMPTS:
            break
    return prompts[:SANITY_PROMPTS], warning


def _reply_text(message: dict[str, Any]) -> str:
    """All an assistant turn generates: its reasoning, its text and its tool calls."""
    parts = [message.get("reasoning_content") or "", message.get("content") or ""]
    if message.get("tool_calls"):
        parts.append(json.dumps(message["tool_calls"], ensure_ascii=False))
    return "\n".join(part for part in parts if part)


def budget_for(p95_reply_tokens: float) -> int:
    """Token budget for the sanity generation: 1.5x the 95th percentile of the training
    replies' lengths, within 64-1024."""
    return max(BUDGET_MIN, min(BUDGET_MAX, int(BUDGET_FACTOR * p95_reply_tokens) + 1))


def sanity_budget(tokenizer: Any, rows: list[list[dict[str, Any]]]) -> int:
    """`budget_for` the replies in ``rows`` (thinking and tool calls included: a model trained
    to think generates them before it stops), tokenized without the template's own tags.
    A training run takes the rendered turns' lengths from preflight instead."""
    lengths = sorted(len(tokenizer.encode(_reply_text(m), add_special_tokens=False))
                     for messages in rows for m in normalize_messages(messages)
                     if m["role"] == "assistant")
    if not lengths:
        return BUDGET_MIN
    return budget_for(lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))])


def run_recipe(spec: TrainSpec, run_dir: Path, log: Callable[[str], None] = print,
               hooks: RunHooks | None = None) -> dict[str, Any]:
    """Runs the whole recipe into ``run_dir``; returns run.json's content. Raises RecipeError
    (after writing run.json) when a check fails, and RecipeStopped when ``hooks`` ask it to
    stop (a rerun into the same folder resumes from the last checkpoint)."""
    run_dir = Path(run_dir).resolve()
    _check_run_dir(spec, run_dir)  # before run.json or preflight.json is touched
    run_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"status": "running", "spec": _spec_dict(spec),
                             "artifacts": {}, "warnings": []}
    try:
        return _run(spec, run_dir, state, log, hooks or RunHooks())
    except RecipeError as error:  # preflight, chat format, training, verification, export
        state.update(status="failed", error=error.to_json())
        _write(run_dir / "run.json", state)
        raise
    except RecipeStopped:
        raise
    except Exception as error:  # a bug or the machine (out of memory, disk full): on record
        state.update(status="failed", error={
            "code": "internal", "message": f"{type(error).__name__}: {error}", "field": "",
            "fix": "not a spec or data problem the checks know; the traceback is in the log"})
        _write(run_dir / "run.json", state)
        raise


def _check_run_dir(spec: TrainSpec, run_dir: Path) -> None:
    """Refuses a run that would overwrite another's record: a dry run into a folder whose
    run succeeded (its run.json became `validated`, best checkpoint and artifacts gone),
    and checkpoints of another spec or data (refused before, but only after run.json was
    rewritten as failed with the refused spec, which the evaluator then read)."""
    from trainer_service.recipe.train import (CHECKPOINTS_DIR, check_checkpoints_match,
                                              check_data_unchanged, data_digests)

    record = run_dir / "run.json"
    if spec.dry_run and record.is_file():
        try:
            status = json.loads(record.read_text(encoding="utf-8")).get("status")
        except ValueError:
            status = None
        if status == "succeeded":
            raise RecipeError("run_dir_in_use", f"{run_dir} holds a finished run; a dry run "
                              "there would replace its run.json and preflight.json", "out",
                              fix="give the dry run its own --out folder")
    checkpoints = run_dir / CHECKPOINTS_DIR
    if checkpoints.is_dir():
        check_checkpoints_match(spec, checkpoints, record=False)
        if Path(spec.dataset).is_dir():
            check_data_unchanged(spec, checkpoints, data_digests(spec.dataset), record=False)


def _export_error(exc: Any, run_dir: Path, after_verify: bool) -> RecipeError:
    """An evaluator ExportError as the run's error; its field is the spec's `export.gguf`
    (the export's own field, a form or `converter`, leads the message)."""
    if after_verify:
        fix = (f"every number is in {run_dir / 'gguf' / 'export.json'}; the merged model in "
               f"{run_dir / 'merged'} is verified and usable as it is. Export another "
               "form with `tunesmith export gguf RUN_DIR --types ...`")
    else:
        fix = ("install the gguf extra (`pip install 'tunesmith[gguf]'`; offline, set "
               "TUNESMITH_LLAMA_CPP_DIR to a llama.cpp checkout) or remove export.gguf from "
               "the spec. This is checked before training, so no training was lost")
    return RecipeError(exc.code, f"{exc.field}: {exc.message}", "export.gguf", fix)


def _export_ready(spec: TrainSpec, run_dir: Path, log: Callable[[str], None]) -> None:
    """Before the first step: llama.cpp and its converter are there when an export is asked
    for (the converter is fetched now, not after hours of training)."""
    if not spec.export.gguf:
        return
    from evaluator.export import ExportError, ensure_converter, llama_cpp_version

    try:
        llama_cpp_version()
        ensure_converter(log)
    except ExportError as exc:
        raise _export_error(exc, run_dir, after_verify=False) from None


def _export(spec: TrainSpec, run_dir: Path, state: dict[str, Any],
            log: Callable[[str], None]) -> None:
    from evaluator.export import ExportError, export_gguf

    try:
        result = export_gguf(run_dir, types=spec.export.gguf, data_dir=Path(spec.dataset),
                             log=log, require_verified=False)  # verified just before
    except ExportError as exc:
        state["artifacts"]["gguf"] = str(run_dir / "gguf" / "export.json")
        raise _export_error(exc, run_dir, after_verify=True) from None
    state["artifacts"]["gguf"] = str(Path(result["out_dir"]) / "export.json")
    state["export"] = {"gguf": {stage["form"]: stage["file"] for stage in result["stages"]}}


def _spec_dict(spec: TrainSpec) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(spec)


def _align_eos(spec: TrainSpec, tokenizer: Any, generation: Any, config: Any,
               template: Any) -> tuple[list[str], Any]:
    """With `align_eos`, makes the end-of-turn token the tokenizer's eos and one of the
    generation config's eos ids (one is built from the model's config when the base ships
    none); returns a warning per change and the generation config preflight checks."""
    if not spec.align_eos:
        return [], generation
    from transformers import GenerationConfig

    generation = generation or GenerationConfig.from_model_config(config)
    changes = align_stop_tokens(tokenizer, generation, template)
    return [f"align_eos: {change}, in this run and in adapter/ and merged/"
            for change in changes], generation


def _run(spec: TrainSpec, run_dir: Path, state: dict[str, Any],
         log: Callable[[str], None], hooks: RunHooks) -> dict[str, Any]:
    from transformers import AutoTokenizer, GenerationConfig

    hooks.stage("validating")
    dataset = Path(spec.dataset)
    _check_inputs(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    except (OSError, ValueError) as exc:
        raise _base_unavailable(spec, exc) from None
    try:
        generation = GenerationConfig.from_pretrained(spec.base_model)
    except OSError:
        generation = None  # preflight builds one from the model's config
    template = resolve_template(tokenizer, spec.chat_template)
    tokenizer.chat_template = template.text
    log(f"preflight: template {template.source}, end of turn {template.end_of_turn}")
    base, embedding_skip = _preflight_model(spec)
    config = getattr(base, "config", base)
    aligned, generation = _align_eos(spec, tokenizer, generation, config, template)
    check_lora_targets(config, spec.lora.target_modules)
    choose_attention(spec, config)  # a kernel this machine lacks fails here, dry runs too
    train_rows = read_split(dataset, "train")
    report = run_preflight(tokenizer, base, train_rows, read_split(dataset, "validation"),
                           template, spec.loss_on, spec.training.max_seq_len,
                           spec.allow_no_validation, generation_config=generation,
                           embedding_skip=embedding_skip, training=spec.training)
    # the spec's own advice, now that the rows are counted (3 epochs on 638 rows)
    report.warnings[:0] = aligned + [w for w in spec.warnings(len(train_rows))
                                     if w not in report.warnings]
    (run_dir / "preflight.json").write_text(report.to_json(), encoding="utf-8")
    state["artifacts"]["preflight"] = str(run_dir / "preflight.json")
    if report.plan:
        state["plan"] = report.plan
        hooks.planned(report.plan)
        items, steps, evals = (report.plan[k] for k in ("train_items", "optimizer_steps",
                                                         "evaluations"))
        log(f"preflight: plan {items} {report.plan['unit']}{'s' * (items != 1)}, {steps} "
            f"optimizer step{'s' * (steps != 1)} ({report.plan['warmup_steps']} warmup), "
            f"{evals} evaluation{'s' * (evals != 1)}")
    for warning in report.warnings:
        if warning not in state["warnings"]:
            state["warnings"].append(warning)
            log(f"WARNING preflight: {warning}")
    # the sanity prompts, read now (a bad row fails here, not after training and merge)
    prompts, prompt_warning = _prompts(dataset)
    _export_ready(spec, run_dir, log)
    check_stop(hooks, "validating")  # a dry run cancelled while validating ends CANCELLED
    if spec.dry_run:
        state["status"] = "validated"
        _write(run_dir / "run.json", state)
        return state

    hooks.stage("training")
    result = train(spec, run_dir, trainable_token_indices=report.trainable_token_ids or None,
                   chat_template=template, log=log, hooks=hooks,
                   announced=tuple(state["warnings"]))
    free_device_memory("cuda")  # the trained 4-bit model, before verification loads its own
    state["warnings"] += [w for w in result.warnings if w not in state["warnings"]]
    state.update(best_checkpoint=result.best_checkpoint, best_eval_loss=result.best_eval_loss,
                 global_step=result.global_step, metrics=result.final_metrics,
                 stopped_early=result.stopped_early, resumed_from=result.resumed_from,
                 attention=result.attention)
    state["artifacts"].update(adapter=str(result.adapter_dir),
                              checkpoints=str(run_dir / CHECKPOINTS_DIR),
                              train_result=str(run_dir / TRAIN_RESULT),
                              metrics=str(result.metrics_path),
                              report=str(run_dir / "report.html"))

    check_stop(hooks, "training")
    hooks.stage("merging")
    dtype = base_dtype(spec.base_model)
    log(f"postflight: merging into the base, in its own precision "
        f"({str(dtype).removeprefix('torch.')})")
    merged = merge_adapter(spec.base_model, result.adapter_dir, run_dir / "merged", tokenizer,
                           template.end_of_turn, dtype=dtype, call_end=template.call_end)
    state["artifacts"]["merged"] = str(merged)
    check_stop(hooks, "merging")
    hooks.stage("verifying")
    verify: dict[str, Any] = {}
    try:
        parity = check_parity(spec.base_model, result.adapter_dir, merged,
                              read_split(dataset, "validation") or train_rows, tokenizer)
        verify["parity"] = parity.to_json()
        if parity.merge_warning:
            state["warnings"].append(parity.merge_warning)
            log(f"WARNING {parity.merge_warning}")
        budget = budget_for(report.reply_tokens["p95"])  # the rendered turns, as trained
        if prompt_warning:
            state["warnings"].append(prompt_warning)
            log(f"WARNING {prompt_warning}")
        sanity = sanity_generate(merged, prompts, tokenizer, template.end_of_turn,
                                 max_new_tokens=budget, base_model=spec.base_model,
                                 call_end=template.call_end)
        verify["sanity"] = sanity.to_json()
        if sanity.call_warning:
            state["warnings"].append(sanity.call_warning)
            log(f"WARNING {sanity.call_warning}")
    except VerifyError as exc:
        verify["failed"] = {"code": exc.code, "message": exc.message, "field": exc.field,
                            "details": exc.details}
        raise
    finally:
        _write(run_dir / "verify.json", verify)
        state["artifacts"]["verify"] = str(run_dir / "verify.json")
    if spec.export.gguf:
        check_stop(hooks, "verifying")
        hooks.stage("exporting")
        _export(spec, run_dir, state, log)
    state["status"] = "succeeded"
    _write(run_dir / "run.json", state)
    return state
