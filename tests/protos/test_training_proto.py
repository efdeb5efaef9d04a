"""The training protocol: committed stubs match the .proto, and its conventions hold
(versioned package, enums starting with _UNSPECIFIED = 0, every element commented)."""

from __future__ import annotations

from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from protos.generate import PROTOS, ROOT, generate

PROTO = ROOT / "protos" / "tunesmith" / "training" / "v1" / "training.proto"


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    generate(tmp_path)
    folder = PROTO.parent.relative_to(ROOT)
    for name in ("training_pb2.py", "training_pb2.pyi", "training_pb2_grpc.py"):
        fresh = (tmp_path / folder / name).read_text()
        committed = (ROOT / folder / name).read_text()
        assert fresh == committed, f"{name} is stale: run `python -m protos.generate`"


def _descriptor(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / "set.pb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    assert protoc.main(["protoc", f"-I{ROOT}", f"-I{well_known}", "--include_source_info",
                        f"--descriptor_set_out={out}", str(PROTO.relative_to(ROOT))]) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return next(f for f in files if f.name.endswith("training.proto"))


def test_package_is_versioned_and_enums_start_unspecified(tmp_path):
    assert PROTO in PROTOS
    fd = _descriptor(tmp_path)
    assert fd.package == "tunesmith.training.v1"
    assert [s.name for s in fd.service] == ["TrainingService"]
    methods = {m.name for m in fd.service[0].method}
    assert methods == {"CreateJob", "GetJob", "ListJobs", "CancelJob", "WatchJob",
                       "ListCheckpoints"}
    assert next(m for m in fd.service[0].method if m.name == "WatchJob").server_streaming
    for enum in fd.enum_type:
        first = enum.value[0]
        assert first.number == 0 and first.name.endswith("_UNSPECIFIED"), enum.name


def test_every_element_is_commented(tmp_path):
    """Paths per descriptor.proto: 4 message, 2 field, 5 enum, 2 value, 6 service, 2 method."""
    fd = _descriptor(tmp_path)
    commented = {tuple(loc.path) for loc in fd.source_code_info.location
                 if loc.leading_comments.strip()}
    missing = []
    for i, message in enumerate(fd.message_type):
        if (4, i) not in commented:
            missing.append(message.name)
        missing += [f"{message.name}.{f.name}" for j, f in enumerate(message.field)
                    if (4, i, 2, j) not in commented]
    for i, enum in enumerate(fd.enum_type):
        if (5, i) not in commented:
            missing.append(enum.name)
        missing += [v.name for j, v in enumerate(enum.value) if (5, i, 2, j) not in commented]
    for i, service in enumerate(fd.service):
        missing += [m.name for j, m in enumerate(service.method)
                    if (6, i, 2, j) not in commented]
    assert not missing, f"uncommented: {missing}"


def test_job_spec_has_every_field_of_the_train_spec():
    """A `train run` YAML spec submits to the service unchanged: each TrainSpec field, nested
    ones too, is a JobSpec field of the same name (and only `resources` is service-only),
    and a value set in YAML reaches the recipe's spec through the wire form."""
    from dataclasses import fields, is_dataclass

    from protos.tunesmith.training.v1 import training_pb2 as pb
    from trainer_service.jobs.validate import spec_from_mapping, to_train_spec
    from trainer_service.recipe.spec import TrainSpec

    def missing(cls, descriptor, prefix=""):
        out = []
        for f in fields(cls):
            proto = descriptor.fields_by_name.get(f.name)
            if proto is None:
                out.append(prefix + f.name)
            elif isinstance(f.default_factory, type) and is_dataclass(f.default_factory):
                out += missing(f.default_factory, proto.message_type, f"{prefix}{f.name}.")
        return out

    assert missing(TrainSpec, pb.JobSpec.DESCRIPTOR) == []
    assert set(pb.JobSpec.DESCRIPTOR.fields_by_name) - {f.name for f in fields(TrainSpec)} \
        == {"resources"}
    recipe = to_train_spec(spec_from_mapping({"base_model": "m", "dataset": "d",
                                              "align_eos": True,
                                              "training": {"attention": "sdpa"}}))
    assert recipe.align_eos and recipe.training.attention == "sdpa"
