"""Shared readers for the deploy/ tests: the repository's pins, YAML files, kustomize's
resource list, and every `tunesmith ...` command line that deploy/ contains."""

from __future__ import annotations

import copy
import json
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
RAY_DIR = DEPLOY / "ray"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
VENV_BIN = Path(sys.executable).parent
TUNESMITH = VENV_BIN / "tunesmith"
# The Kubernetes versions the built-in kinds are validated against (kubernetes-validate's
# bundled schemas, strict: unknown fields fail): the oldest release the manifests claim to
# support and the newest the pinned validator ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")


# --- the project's pins ------------------------------------------------------------------

@lru_cache(maxsize=None)
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def dependency_pin(name: str) -> str:
    """The exact version pyproject.toml pins for ``name`` (extras ignored)."""
    for dep in pyproject()["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==(\S+)", dep.split(";")[0].strip())
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml pins no {name}")


def makefile_value(name: str) -> str:
    """A `NAME ?= value` assignment of the Makefile."""
    match = re.search(rf"^{name}\s*\?=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"Makefile sets no {name}"
    return match.group(1).strip()


def torch_pin() -> str:
    match = re.fullmatch(r"torch==(\S+)", makefile_value("TORCH_PIN"))
    assert match, "Makefile TORCH_PIN is not an exact torch pin"
    return match.group(1)


def package_dirs() -> list[str]:
    """Top-level package folders setuptools installs (packages.find include patterns)."""
    patterns = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({p.rstrip("*").rstrip(".") for p in patterns})


def project_version() -> str:
    return pyproject()["project"]["version"]


# --- YAML ----------------------------------------------------------------------------

def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it


def load_all(path: Path) -> list[Any]:
    """Every document of a YAML file (multi-document aware), empty ones dropped."""
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.load_all(f, Loader=_LOADER) if doc is not None]


def kustomization() -> dict[str, Any]:
    (doc,) = load_all(K8S / "kustomization.yaml")
    return doc


def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    """(file, object) for every resource the kustomization lists, as kustomize would emit
    them here: the namespace set, and the configMapGenerator's ConfigMaps added."""
    kz = kustomization()
    out = []
    for entry in kz["resources"]:
        for doc in load_all(K8S / entry):
            doc = copy.deepcopy(doc)
            if kz.get("namespace") and doc.get("kind") != "Namespace":
                doc["metadata"]["namespace"] = kz["namespace"]
            out.append((entry, doc))
    for gen in kz.get("configMapGenerator", []):
        data = {}
        for item in gen.get("files", []):
            key, _, path = item.rpartition("=") if "=" in item else (Path(item).name, "", item)
            data[key] = (K8S / path).read_text(encoding="utf-8")
        out.append(("kustomization.yaml", {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": gen["name"], "namespace": kz.get("namespace")}, "data": data}))
    return out


def find(kind: str, name: str) -> dict[str, Any]:
    for _, obj in k8s_objects():
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} in deploy/k8s")


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, PodTemplateSpec) of the pods an object makes."""
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield "spec.template", spec["template"]
    if obj["kind"] == "RayJob":
        if "rayClusterSpec" in spec:
            yield from _ray_cluster_templates(spec["rayClusterSpec"], "spec.rayClusterSpec")
        if "submitterPodTemplate" in spec:
            yield "spec.submitterPodTemplate", spec["submitterPodTemplate"]
    if obj["kind"] == "RayCluster":
        yield from _ray_cluster_templates(spec, "spec")


def _ray_cluster_templates(spec: dict[str, Any], path: str):
    yield f"{path}.headGroupSpec.template", spec["headGroupSpec"]["template"]
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        yield f"{path}.workerGroupSpecs[{i}].template", group["template"]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    for _, template in pod_templates(obj):
        for c in template["spec"].get("containers", []):
            if c["name"] == name:
                return c
    raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} has no container {name}")


def compose() -> dict[str, Any]:
    (doc,) = load_all(DOCKER / "compose.yaml")
    return doc


def ray_cluster_config() -> dict[str, Any]:
    (doc,) = load_all(RAY_DIR / "cluster.yaml")
    return doc


def json_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


# --- command lines -----------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    source: str  # where it was found, for messages
    argv: tuple[str, ...]  # from the executable on


_SHELL_OPERATORS = {";", "&&", "||", "|", "&", "(", ")", ">", ">>", "<", "2>", "|&", ";;"}
# Words after which the next word is still in command position.
_PREFIX_WORDS = {"sudo", "env", "exec", "nohup", "time", "command"}


def shell_commands(script: str, executable: str) -> list[tuple[str, ...]]:
    """Every simple command in a shell snippet that runs ``executable`` (by name or path),
    up to the next shell operator: at the start of a command, after `VAR=value` or a
    prefix such as `sudo`, or after a `--` that ends another tool's options (`ray job
    submit ... -- tunesmith ...`, `kubectl exec POD -- tunesmith ...`)."""
    script = re.sub(r"\\\n", " ", script)
    found = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # an unbalanced quote in prose
            continue
        i, start = 0, True
        while i < len(tokens):
            token = tokens[i]
            if token in _SHELL_OPERATORS:
                start = True
            elif start and (token == executable or token.endswith("/" + executable)):
                argv = [executable]
                i += 1
                while i < len(tokens) and tokens[i] not in _SHELL_OPERATORS:
                    argv.append(tokens[i])
                    i += 1
                found.append(tuple(argv))
                continue
            elif start and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", token)
                            or token in _PREFIX_WORDS):
                pass
            else:
                start = token == "--"
            i += 1
    return found


def markdown_shell_blocks(path: Path) -> list[str]:
    """The bodies of a Markdown file's ```bash / ```sh / ```shell / ```console blocks."""
    text = path.read_text(encoding="utf-8")
    return re.findall(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, re.M | re.S)


def _argv_lists(obj: Any) -> Iterator[list[str]]:
    """Container command+args lists anywhere in a manifest."""
    if isinstance(obj, dict):
        if "containers" in obj or "initContainers" in obj:
            for c in obj.get("initContainers", []) + obj.get("containers", []):
                argv = list(c.get("command", [])) + list(c.get("args", []))
                if argv:
                    yield argv
        for value in obj.values():
            yield from _argv_lists(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _argv_lists(value)


def commands_of(executable: str) -> list[Command]:
    """Every `executable ...` command in deploy/: the Ray cluster config's commands, the
    RayJob entrypoints, container commands (also inside `sh -c`), compose commands,
    Dockerfile RUN/CMD lines and the shell blocks of deploy/'s Markdown files."""
    out: list[Command] = []

    def add(source: str, argv: list[str] | tuple[str, ...]) -> None:
        if argv and (argv[0] == executable or argv[0].endswith("/" + executable)):
            out.append(Command(source, (executable, *argv[1:])))
        elif len(argv) >= 3 and argv[0] in ("sh", "bash", "/bin/sh", "/bin/bash") \
                and argv[1] in ("-c", "-lc", "-ec"):
            for cmd in shell_commands(argv[2], executable):
                out.append(Command(source, cmd))

    cluster = ray_cluster_config()
    for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        for line in cluster.get(key) or []:
            for cmd in shell_commands(line, executable):
                add(f"deploy/ray/cluster.yaml {key}", cmd)
    for entry, obj in k8s_objects():
        if obj["kind"] == "RayJob":
            for cmd in shell_commands(obj["spec"]["entrypoint"], executable):
                add(f"deploy/k8s/{entry} entrypoint", cmd)
        for argv in _argv_lists(obj):
            add(f"deploy/k8s/{entry} {obj['kind']}/{obj['metadata']['name']}", argv)
    for name, service in compose()["services"].items():
        command = service.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        if command:
            add(f"deploy/docker/compose.yaml services.{name}", command)
    import dockerfile as dockerfile_parser

    for dockerfile in sorted(DOCKER.glob("Dockerfile*")):
        if dockerfile.suffix == ".dockerignore":
            continue
        for instr in dockerfile_parser.parse_file(str(dockerfile)):
            if instr.cmd in ("RUN", "CMD", "ENTRYPOINT"):
                if instr.json:
                    add(f"{dockerfile.name}:{instr.start_line}", list(instr.value))
                else:
                    for cmd in shell_commands(" ".join(instr.value), executable):
                        add(f"{dockerfile.name}:{instr.start_line}", cmd)
    for md in sorted(DEPLOY.rglob("*.md")):
        for block in markdown_shell_blocks(md):
            for cmd in shell_commands(block, executable):
                add(str(md.relative_to(ROOT)), cmd)
    return out
