"""A JobSpec on the wire -> a checked TrainSpec, before a job is queued.

Two kinds of refusal: INVALID_ARGUMENT for values the recipe would reject (every problem
listed, each naming its dotted field), and PERMISSION_DENIED for a dataset, model or
template path that leads outside the server's data roots (`..`, absolute paths elsewhere,
symlinks pointing out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import json_format

from data_engine.config_loader import from_dict
from data_engine.errors import ConfigError
from protos.tunesmith.training.v1 import training_pb2 as pb
from trainer_service.errors import InvalidArgument, PermissionDenied
from trainer_service.recipe.spec import HUB_ID, TrainSpec

# A hub model id ("org/name"); used as such only when no folder of that name exists.
TEMPLATE_KEYWORDS = ("auto", "chatml")


def spec_from_mapping(data: dict[str, Any]) -> pb.JobSpec:
    """A JobSpec from a YAML-style mapping (what `train run` reads); unknown keys are errors."""
    data = dict(data)
    lora = data.get("lora")
    if isinstance(lora, dict) and isinstance(lora.get("target_modules"), str):
        modules = lora["target_modules"]
        data["lora"] = {**lora, "target_modules": [] if modules == "all-linear" else [modules]}
    unknown = _unknown_keys(data, pb.JobSpec.DESCRIPTOR, "")
    if unknown:
        raise InvalidArgument(unknown)
    try:
        return json_format.ParseDict(data, pb.JobSpec())
    except json_format.ParseError as exc:
        raise InvalidArgument([("spec", str(exc))]) from None


def _unknown_keys(data: Any, descriptor: Any, prefix: str) -> list[tuple[str, str]]:
    if not isinstance(data, dict):
        return []
    problems = []
    for key, value in data.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            known = ", ".join(sorted(descriptor.fields_by_name))
            problems.append((f"{prefix}{key}", f"unknown key (known: {known})"))
        elif field.message_type is not None and field.message_type.name != "Timestamp":
            problems += _unknown_keys(value, field.message_type, f"{prefix}{key}.")
    return problems


def unknown_fields(message: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Fields of ``message`` (and the messages in it) that this server's proto lacks: what a
    newer client sends. Python's protobuf keeps them unread; a YAML spec's unknown keys are
    refused, and so are these."""
    from google.protobuf import unknown_fields as unknown

    problems = []
    numbers = sorted({f.field_number for f in unknown.UnknownFieldSet(message)})
    if numbers:
        problems.append((prefix.rstrip(".") or "spec",
                         f"field number{'s' * (len(numbers) > 1)} "
                         f"{', '.join(map(str, numbers))} of {message.DESCRIPTOR.full_name} "
                         "unknown to this server (a newer client's field?): upgrade the "
                         "server, or leave the field out"))
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if hasattr(value, "ListFields"):  # one message
            items = [value]
        else:  # repeated messages, or a map (its values: messages or scalars)
            items = list(value.values()) if hasattr(value, "values") else list(value)
        for item in items:
            if hasattr(item, "ListFields"):
                problems += unknown_fields(item, f"{prefix}{field.name}.")
    return problems


def spec_to_mapping(spec: pb.JobSpec) -> dict[str, Any]:
    """The spec's set fields as a YAML-style mapping, without the service-only `resources`."""
    data = json_format.MessageToDict(spec, preserving_proto_field_name=True)
    data.pop("resources", None)
    lora = data.get("lora")
    if isinstance(lora, dict) and "target_modules" in lora:
        modules = lora["target_modules"]
        lora["target_modules"] = modules[0] if modules == ["all-linear"] else modules
    return data


def to_train_spec(spec: pb.JobSpec) -> TrainSpec:
    """The recipe's TrainSpec, or InvalidArgument listing every problem with its field."""
    try:
        return from_dict(TrainSpec, spec_to_mapping(spec), "job spec")
    except ConfigError as exc:
        raise InvalidArgument([_split(p) for p in exc.problems]) from None


def _split(problem: str) -> tuple[str, str]:
    field, _, message = problem.partition(": ")
    return (field, message) if message else ("spec", problem)


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _confine(field: str, value: str, roots: list[Path]) -> Path:
    """The real path of ``value`` (relative ones start at the first root), or
    PermissionDenied when it leads outside every root."""
    raw = Path(value)
    if ".." in raw.parts:
        raise PermissionDenied(f"{value!r} contains '..'; give a path inside the data roots",
                               field)
    candidate = raw if raw.is_absolute() else roots[0] / raw
    real = candidate.resolve()  # follows symlinks, so a link pointing out is caught here
    if not _inside(real, roots):
        shown = f"{value!r}" + (f" (a link to {real})" if real != candidate else "")
        raise PermissionDenied(f"{shown} is outside the server's data roots "
                               f"({', '.join(map(str, roots))})", field)
    return real


def validate_spec(spec: pb.JobSpec, data_roots: list[Path]) -> pb.JobSpec:
    """Checks a submitted spec; returns a copy with its paths made absolute and real."""
    roots = [Path(r).resolve() for r in data_roots]
    out = pb.JobSpec()
    out.CopyFrom(spec)
    problems: list[tuple[str, str]] = unknown_fields(spec)
    if not spec.dataset:
        problems.append(("dataset", "must be set"))
    else:
        dataset = _confine("dataset", spec.dataset, roots)
        out.dataset = str(dataset)
        if not (dataset / "train.jsonl").is_file():
            problems.append(("dataset", f"{spec.dataset!r} has no train.jsonl (a data engine "
                             "output folder is expected)"))
        for split in ("train", "validation", "test"):  # a file may be a link leading out
            if (dataset / f"{split}.jsonl").exists():
                _confine("dataset", str(dataset / f"{split}.jsonl"), roots)
    if not spec.base_model:
        problems.append(("base_model", "must be set"))
    else:
        raw = Path(spec.base_model)
        local = raw.is_absolute() or ".." in raw.parts or (roots[0] / raw).exists() \
            or not HUB_ID.match(spec.base_model)
        if local:
            model = _confine("base_model", spec.base_model, roots)
            out.base_model = str(model)
            if not (model / "config.json").is_file():
                problems.append(("base_model", f"{spec.base_model!r} is not a model folder "
                                 "(no config.json)"))
    template = spec.chat_template if spec.HasField("chat_template") else "auto"
    if template and template not in TEMPLATE_KEYWORDS:
        path = _confine("chat_template", template, roots)
        out.chat_template = str(path)
        if not path.is_file():
            problems.append(("chat_template", f"{template!r}: no such file"))
    if spec.resources.HasField("gpus") and spec.resources.gpus < 0:
        problems.append(("resources.gpus", "must be >= 0"))
    try:
        to_train_spec(out)
    except InvalidArgument as exc:
        problems += exc.problems
    if problems:  # the recipe's checks repeat some of these (`dataset: must be set`)
        raise InvalidArgument(list(dict.fromkeys(problems)))
    return out
