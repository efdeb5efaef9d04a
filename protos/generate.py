"""Regenerates the Python stubs beside each .proto: `python -m protos.generate`.

The stubs are committed (a user needs no protoc); tests/protos regenerates them into a
temporary folder and fails when the committed ones differ from the .proto files.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = sorted((ROOT / "protos").rglob("*.proto"))


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Runs protoc (grpcio-tools) on every .proto under protos/, writing into ``out_dir``.

    Paths are taken from the repository root, so the modules import as
    ``protos.tunesmith.training.v1.training_pb2`` and never shadow the `tunesmith` package.
    """
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{ROOT}", f"-I{well_known}",
            f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}",
            *(str(p.relative_to(ROOT)) for p in PROTOS)]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    return [out_dir / p.relative_to(ROOT).parent for p in PROTOS]


if __name__ == "__main__":
    for folder in generate():
        print(f"generated into {folder}", file=sys.stderr)
