"""deploy/k8s: every manifest against the schema of its kind, the kustomization, and the
facts the manifests must agree on with the code (ports, volumes, the single-writer trainer).

Schemas: Kubernetes built-in kinds against the JSON schemas that `kubernetes-validate` ships
(strict: unknown fields fail), for each version in common.K8S_VERSIONS. KubeRay's RayCluster
and RayJob against tests/deploy/schemas/kuberay-v1.schema.json (hand-written from KubeRay's
v1 API reference, see its description), their pod templates against Kubernetes'
PodTemplateSpec.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy import common

OBJECTS = common.k8s_objects()
RAY_KINDS = ("RayCluster", "RayJob")


def _id(item) -> str:
    entry, obj = item
    return f"{entry}:{obj['kind']}/{obj['metadata']['name']}"


def _builtin() -> list[tuple[str, dict]]:
    return [o for o in OBJECTS if not o[1]["apiVersion"].startswith("ray.io/")]


def _ray() -> list[tuple[str, dict]]:
    return [o for o in OBJECTS if o[1]["apiVersion"].startswith("ray.io/")]


# --- files ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", common.yaml_files(),
                         ids=[str(p.relative_to(common.ROOT)) for p in common.yaml_files()])
def test_every_yaml_under_deploy_parses(path):
    docs = common.load_all(path)
    assert docs, f"{path} has no document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: a document is not a mapping"


def test_kustomization_lists_every_manifest_and_each_parses():
    kz = common.kustomization()
    assert kz["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kz["kind"] == "Kustomization"
    listed = set(kz["resources"])
    generated = {item.rpartition("=")[2] for gen in kz.get("configMapGenerator", [])
                 for item in gen.get("files", [])}
    for entry in listed | generated:
        assert (common.K8S / entry).is_file(), f"kustomization.yaml names missing {entry}"
    on_disk = {p.name for p in common.K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed | generated, \
        f"files in deploy/k8s that the kustomization leaves out: {on_disk - listed - generated}"
    for entry in listed:
        for doc in common.load_all(common.K8S / entry):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{entry}: {doc}"
            assert doc["metadata"].get("name"), f"{entry}: a {doc['kind']} has no name"
    keys = [(o["kind"], o["metadata"]["name"]) for _, o in OBJECTS]
    assert len(keys) == len(set(keys)), "two objects of one kind share a name"
    kinds = {k for k, _ in keys}
    assert {"RayCluster", "RayJob", "Deployment", "Service", "PersistentVolumeClaim",
            "Secret", "ConfigMap", "Namespace"} <= kinds


# --- schemas -------------------------------------------------------------------------

def _k8s_validator(schema_file: str, version: str) -> jsonschema.Validator:
    """A validator for one of kubernetes-validate's bundled schemas (strict flavour)."""
    import importlib.resources

    from referencing import Registry, Resource

    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / \
        f"v{version}-local-strict"
    schema = json.loads((folder / schema_file).read_text())
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.mark.parametrize("version", common.K8S_VERSIONS)
@pytest.mark.parametrize("item", _builtin(), ids=[_id(o) for o in _builtin()])
def test_builtin_kind_matches_the_kubernetes_schema(item, version):
    import kubernetes_validate

    entry, obj = item
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{entry}: {obj['kind']}/{obj['metadata']['name']} against Kubernetes "
                    f"{exc.version}: {where}: {exc.message}")


def test_the_validator_is_strict():
    """A misspelt field must fail, or the schema tests above prove little."""
    import kubernetes_validate

    obj = copy.deepcopy(common.find("Deployment", "tunesmith-trainer"))
    obj["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, common.K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("item", _ray(), ids=[_id(o) for o in _ray()])
def test_kuberay_object_matches_the_kuberay_schema(item):
    entry, obj = item
    validator = jsonschema.Draft202012Validator(common.json_schema("kuberay-v1.schema.json"))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(obj)]
    # oneOf reports only "not valid under any"; the kind's own branch says why.
    branch = validator.evolve(schema={"$ref": f"#/$defs/{obj['kind']}",
                                      "$defs": validator.schema["$defs"]})
    errors += [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
               for e in branch.iter_errors(obj)]
    assert not errors, f"{entry}: {obj['kind']}/{obj['metadata']['name']}: " + "; ".join(errors)


def test_the_kuberay_schema_rejects_mistakes():
    validator = jsonschema.Draft202012Validator(common.json_schema("kuberay-v1.schema.json"))
    cluster = common.find("RayCluster", "tunesmith")
    assert validator.is_valid(cluster)
    for mutate in (
        lambda c: c["spec"].update(workerGroups=[]),  # misspelt workerGroupSpecs
        lambda c: c["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
        lambda c: c["spec"]["workerGroupSpecs"][0].pop("groupName"),
        lambda c: c.update(apiVersion="ray.io/v1alpha1"),
        lambda c: c["spec"]["authOptions"].update(mode="tokens"),
    ):
        broken = copy.deepcopy(cluster)
        mutate(broken)
        assert not validator.is_valid(broken)
    job = common.find("RayJob", "tunesmith-synth-evol")
    both = copy.deepcopy(job)
    both["spec"]["rayClusterSpec"] = copy.deepcopy(cluster["spec"])
    assert not validator.is_valid(both), "a RayJob with a selector and its own cluster"


@pytest.mark.parametrize("version", common.K8S_VERSIONS)
@pytest.mark.parametrize("item", _ray(), ids=[_id(o) for o in _ray()])
def test_kuberay_pod_templates_match_pod_template_spec(item, version):
    entry, obj = item
    validator = _k8s_validator("podtemplatespec-v1.json", version)
    for path, template in common.pod_templates(obj):
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(template)]
        assert not errors, f"{entry}: {path} against Kubernetes {version}: " + "; ".join(errors)


# --- kustomize -----------------------------------------------------------------------

def _kustomize(folder: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed: `kubectl kustomize` builds the kustomization"
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_kustomize_builds_what_the_files_say():
    built = _kustomize(common.K8S)
    key = lambda o: (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))  # noqa: E731
    assert sorted(map(key, built)) == sorted(key(o) for _, o in OBJECTS)
    ours = {key(o): o for _, o in OBJECTS}
    for obj in built:
        assert obj == ours[key(obj)], f"kustomize changed {key(obj)}"


def test_kustomize_images_reach_every_container(tmp_path):
    """The `images:` setting must rewrite the RayCluster's containers too (a custom kind)."""
    shutil.copytree(common.K8S, tmp_path / "k8s")
    path = tmp_path / "k8s" / "kustomization.yaml"
    kz = yaml.safe_load(path.read_text())
    kz["images"][0]["newName"] = "registry.example.com/team/tunesmith"
    path.write_text(yaml.safe_dump(kz))
    images = [c["image"] for obj in _kustomize(tmp_path / "k8s")
              for _, t in common.pod_templates(obj)
              for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]]
    assert images and all(i.startswith("registry.example.com/team/tunesmith:") for i in images)


# --- what the manifests must agree on ------------------------------------------------

def _all_containers():
    for entry, obj in OBJECTS:
        for path, template in common.pod_templates(obj):
            for c in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
                yield f"{entry}:{obj['kind']}/{obj['metadata']['name']} {path}", template, c


def test_images_are_pinned_and_non_root():
    kz = common.kustomization()
    (image,) = kz["images"]
    assert image["newTag"] == f"{common.project_version()}-cuda"
    for where, template, c in _all_containers():
        name, _, tag = c["image"].rpartition(":")
        assert name == image["name"] and tag == image["newTag"], f"{where}: {c['image']}"
        ctx = template["spec"].get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser") == 10001, where
        assert c.get("securityContext", {}).get("allowPrivilegeEscalation") is False, where


def _arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _mount_for(template: dict, c: dict, path: str) -> tuple[dict, dict]:
    """The volumeMount holding ``path`` (the longest mountPath prefix) and its volume."""
    mounts = [m for m in c.get("volumeMounts", [])
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"nothing is mounted at {path}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def test_trainer_is_a_single_writer_with_its_state_volume_and_token():
    deployment = common.find("Deployment", "tunesmith-trainer")
    assert deployment["spec"]["replicas"] == 1, "two servers cannot share a state dir"
    assert deployment["spec"]["strategy"]["type"] == "Recreate", \
        "a rolling update would start the new server while the old one holds the state dir"
    template = deployment["spec"]["template"]
    c = common.container(deployment, "trainer")
    argv = c["command"] + c.get("args", [])
    assert argv[:3] == ["tunesmith", "trainer", "serve"]
    assert _arg(argv, "--host") == "0.0.0.0"
    _, state = _mount_for(template, c, _arg(argv, "--state-dir"))
    claim = common.find("PersistentVolumeClaim", state["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mount, token = _mount_for(template, c, _arg(argv, "--token-file"))
    secret = common.find("Secret", token["secret"]["secretName"])
    key = Path(_arg(argv, "--token-file")).relative_to(mount["mountPath"]).as_posix()
    assert key in secret.get("stringData", {}) | secret.get("data", {})
    _mount_for(template, c, _arg(argv, "--data-root"))
    grpc_port, metrics_port = int(_arg(argv, "--port")), int(_arg(argv, "--metrics-port"))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == grpc_port, probe
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1  # --executor local: jobs run here
    assert _arg(argv, "--executor") == "local"
    assert template["spec"]["terminationGracePeriodSeconds"] > float(_arg(argv, "--drain-timeout"))
    service = common.find("Service", "tunesmith-trainer")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {p["port"] for p in service["spec"]["ports"]} == {grpc_port, metrics_port}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}


def test_trainer_refuses_the_placeholder_token(tmp_path):
    deployment = common.find("Deployment", "tunesmith-trainer")
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    mount = init["volumeMounts"][0]["mountPath"]
    script = init["command"][2].replace(mount, str(tmp_path))
    secret = common.find("Secret", "tunesmith-trainer-token")
    for value, expected in ((secret["stringData"]["token"], 1), ("0f3c9a7d2b", 0)):
        (tmp_path / "token").write_text(value)
        assert subprocess.run([init["command"][0], "-c", script], capture_output=True,
                              timeout=10).returncode == expected


def test_vllm_serves_one_model_per_gpu_behind_a_service():
    deployment = common.find("Deployment", "tunesmith-vllm")
    template = deployment["spec"]["template"]
    c = common.container(deployment, "vllm")
    argv = c["command"] + c.get("args", [])
    port = int(_arg(argv, "--port"))
    assert c["ports"] == [{"name": "http", "containerPort": port}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    mount, volume = _mount_for(template, c, argv[2])
    assert mount["readOnly"] is True and mount["mountPath"] == argv[2]
    assert common.find("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    service = common.find("Service", "tunesmith-vllm")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]


def test_ray_cluster_matches_the_project():
    cluster = common.find("RayCluster", "tunesmith")
    spec = cluster["spec"]
    assert spec["rayVersion"] == common.dependency_pin("ray")
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {}), "the head is CPU-only"
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if g["template"]["spec"]["containers"][0]["resources"].get("limits", {})
                  .get("nvidia.com/gpu")]
    assert gpu_groups, "no GPU worker group"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]


def test_ray_start_params_are_ray_start_flags():
    from ray.scripts.scripts import start

    flags = {o.lstrip("-") for p in start.params for o in p.opts + p.secondary_opts}
    for _, obj in _ray():
        spec = obj["spec"].get("rayClusterSpec", obj["spec"])
        if "headGroupSpec" not in spec:
            continue
        for params in [spec["headGroupSpec"].get("rayStartParams", {})] + \
                [g.get("rayStartParams", {}) for g in spec.get("workerGroupSpecs", [])]:
            assert set(params) <= flags, f"not `ray start` flags: {set(params) - flags}"


def test_ray_jobs_reach_their_cluster_config_and_storage():
    from data_engine.config import load_config

    cluster = common.find("RayCluster", "tunesmith")
    head_template = cluster["spec"]["headGroupSpec"]["template"]
    head = head_template["spec"]["containers"][0]
    jobs = [o for _, o in OBJECTS if o["kind"] == "RayJob"]
    assert jobs
    for job in jobs:
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        (argv,) = common.shell_commands(job["spec"]["entrypoint"], "tunesmith")
        argv = list(argv)
        config_path = _arg(argv, "--config")
        mount, volume = _mount_for(head_template, head, config_path)
        config_map = common.find("ConfigMap", volume["configMap"]["name"])
        key = Path(config_path).relative_to(mount["mountPath"]).as_posix()
        assert key in config_map["data"], f"{config_map['metadata']['name']} has no {key}"
        config = load_config(common.K8S / key)  # the config the job reads, checked by the code
        for flag in ("--input", "--out"):
            _mount_for(head_template, head, _arg(argv, flag))
        if config.ray.shared_storage:
            # Tasks read stage outputs on any node: every Ray pod mounts the same volume.
            out = _arg(argv, "--out")
            claims = set()
            for _, template in common.pod_templates(cluster):
                _, volume = _mount_for(template, template["spec"]["containers"][0], out)
                claims.add(volume["persistentVolumeClaim"]["claimName"])
            assert len(claims) == 1
            claim = common.find("PersistentVolumeClaim", claims.pop())
            assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        if config.engine.kind == "vllm":
            most = sum(g["maxReplicas"] for g in cluster["spec"]["workerGroupSpecs"]
                       if g["template"]["spec"]["containers"][0]["resources"]["limits"]
                       .get("nvidia.com/gpu"))
            assert config.engine.replicas <= most, "more vLLM replicas than GPU workers"
