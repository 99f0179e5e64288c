"""The Kubernetes manifests: valid against the Kubernetes API schemas (kubernetes-validate, strict), multi-document YAML whose containers run command lines the real CLI, config and
actor accept, with key files where `gspo-async keys` puts them and where the secret volumes mount them."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from gspo_async.protocol.auth import CurveClientKeys, CurveServerKeys
from tests.launch.conftest import LAUNCH, ROOT, check_actor, check_learner

K8S = LAUNCH / "k8s"
FIELD_VALUES = {"metadata.name": "gspo-actors-5d8c7-x2x9q", "status.podIP": "10.42.0.17"}


def documents(name: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
    assert docs and all("apiVersion" in d and "kind" in d and "metadata" in d for d in docs), name
    return docs


def pod_spec(name: str, kind: str) -> dict:
    [doc] = [d for d in documents(name) if d["kind"] == kind]
    labels = doc["spec"]["template"]["metadata"]["labels"]
    assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the selector must match the pods"
    spec = doc["spec"]["template"]["spec"]
    known = {v["name"] for v in spec["volumes"]} | {t["metadata"]["name"] for t in doc["spec"].get(
        "volumeClaimTemplates", [])}
    for container in spec["containers"]:
        for m in container["volumeMounts"]:
            assert m["name"] in known, f"{name}: volume {m['name']} is mounted but not defined"
    return spec


def argv_of(container: dict) -> list[str]:
    """command + args with $(VAR) expanded from the container's env (downward-API fields get sample values)."""
    env = {}
    for e in container.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else FIELD_VALUES[e["valueFrom"]["fieldRef"]["fieldPath"]]

    def expand(word: str) -> str:
        for var in re.findall(r"\$\((\w+)\)", word):
            assert var in env, f"$({var}) is not defined in the container's env"
        return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], word)

    argv = [expand(w) for w in container["command"] + container.get("args", [])]
    assert argv[0] == "gspo-async", argv
    return argv[1:]


def mounted(spec: dict, container: dict, keys_dir: Path, tmp: Path) -> dict[str, Path]:
    """Lay out each secret volume as Kubernetes would (its items, from a `gspo-async keys` directory); returns
    mountPath -> local directory, so that the paths the container uses can be checked."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    out = {}
    for m in container["volumeMounts"]:
        secret = volumes.get(m["name"], {}).get("secret")
        if secret is None:
            continue
        local = tmp / m["name"]
        for item in secret["items"]:
            assert (keys_dir / item["key"]).is_file(), f"`gspo-async keys` writes no {item['key']}"
            (local / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(keys_dir / item["key"], local / item["path"])
        out[m["mountPath"]] = local
    return out


def localise(argv: list[str], mounts: dict[str, Path]) -> list[str]:
    for mount, local in mounts.items():
        argv = [w.replace(f"={mount}/", f"={local}/") for w in argv]
    return argv


def test_manifests_are_multi_document_yaml():
    kinds = sorted(d["kind"] for name in ("learner.yaml", "actors.yaml") for d in documents(name))
    assert kinds == ["Deployment", "Service", "StatefulSet"]


def test_the_secret_holds_what_gspo_async_keys_writes(keys_dir):
    """The kubectl command in learner.yaml puts exactly the files the volumes mount into the secret."""
    text = (K8S / "learner.yaml").read_text()
    in_secret = set(re.findall(r"--from-file=keys/(\S+)", text))
    assert in_secret and all((keys_dir / f).is_file() for f in in_secret), in_secret
    for name, kind in (("learner.yaml", "StatefulSet"), ("actors.yaml", "Deployment")):
        for volume in pod_spec(name, kind)["volumes"]:
            if "secret" in volume:
                assert {i["key"] for i in volume["secret"]["items"]} <= in_secret, name


def test_learner_container_runs_a_valid_learner(keys_dir, tmp_path):
    spec = pod_spec("learner.yaml", "StatefulSet")
    [container] = spec["containers"]
    mounts = mounted(spec, container, keys_dir, tmp_path)
    config_map = re.search(r"--from-file=config\.yaml=(\S+)", (K8S / "learner.yaml").read_text()).group(1)
    args, cfg = check_learner(localise(argv_of(container), mounts), config_file=ROOT / config_map)
    assert args.resume and args.start_if_missing and args.config == "/config/config.yaml"  # a first start runs
    assert {m["mountPath"] for m in container["volumeMounts"] if m["name"] == "config"} == {"/config"}
    ports = {p["containerPort"] for p in container["ports"]}
    service = next(d for d in documents("learner.yaml") if d["kind"] == "Service")
    assert {cfg.learner.port, cfg.weight_store_port} == ports == {p["targetPort"] for p in service["spec"]["ports"]}
    assert cfg.learner.advertise_host == FIELD_VALUES["status.podIP"] and cfg.learner.host == "0.0.0.0"
    server = CurveServerKeys.load(cfg.learner.curve.secret_key, cfg.learner.curve.authorized_clients)
    assert len(server.authorized) == 1
    # the model and the prompts the config names are on mounted volumes
    volume_paths = [m["mountPath"] for m in container["volumeMounts"]]
    for path in (cfg.model.path, cfg.task.path):
        assert any(str(path).startswith(v + "/") for v in volume_paths), path


def test_actor_container_runs_a_valid_actor_that_the_learner_accepts(keys_dir, tmp_path):
    learner_spec = pod_spec("learner.yaml", "StatefulSet")
    learner_mounts = mounted(learner_spec, learner_spec["containers"][0], keys_dir, tmp_path / "learner")
    server = CurveServerKeys.load(learner_mounts["/keys"] / "server.key_secret")
    spec = pod_spec("actors.yaml", "Deployment")
    [container] = spec["containers"]
    mounts = mounted(spec, container, keys_dir, tmp_path / "actor")
    args, actor = check_actor(localise(argv_of(container), mounts))
    assert args.id == FIELD_VALUES["metadata.name"]
    host, port = args.learner.rsplit(":", 1)
    service = next(d for d in documents("learner.yaml") if d["kind"] == "Service")
    assert host == service["metadata"]["name"] and int(port) in {p["port"] for p in service["spec"]["ports"]}
    keys: CurveClientKeys = actor.client.curve
    assert keys is not None and keys.server_public == server.public and keys.public in server.authorized
    assert "actor.device=cuda" in args.overrides
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1  # one GPU per actor


@pytest.mark.parametrize("name,kind", [("learner.yaml", "StatefulSet"), ("actors.yaml", "Deployment")])
def test_secret_files_are_private_and_readable_by_the_non_root_user(name, kind):
    """Mode 0440 with the pod's fsGroup: the keys belong to the image's user's group, and nobody else reads them
    (0400 would leave them to root, which the pods do not run as)."""
    spec = pod_spec(name, kind)
    security = spec["securityContext"]
    uid, _ = dockerfile_user()
    assert security["runAsNonRoot"] and security["runAsUser"] == uid and security["fsGroup"] == security["runAsGroup"]
    secrets = [v["secret"] for v in spec["volumes"] if "secret" in v]
    assert secrets and all(s["defaultMode"] == 0o440 for s in secrets)


def dockerfile_user() -> tuple[int, int]:
    """(uid, gid) of the Dockerfile's USER, from its useradd line."""
    text = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"^USER (\d+)$", text, re.M).group(1))
    add = re.search(r"useradd --uid (\d+) --gid (\d+)", text)
    assert add and int(add.group(1)) == uid, "USER must be the user the Dockerfile creates"
    return uid, int(add.group(2))


def test_the_service_is_headless_and_names_the_statefulset():
    service = next(d for d in documents("learner.yaml") if d["kind"] == "Service")
    [stateful] = [d for d in documents("learner.yaml") if d["kind"] == "StatefulSet"]
    assert service["spec"]["clusterIP"] == "None"  # YAML's None is the string the API expects
    assert stateful["spec"]["serviceName"] == service["metadata"]["name"]
    labels = stateful["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items(), "the Service must select the learner pod"
    assert all(p["name"] for p in service["spec"]["ports"])


def test_every_claim_the_pods_mount_is_defined():
    claims = {d["metadata"]["name"]: d for d in documents("volumes.yaml")}
    assert all(d["kind"] == "PersistentVolumeClaim" and d["spec"]["resources"]["requests"]["storage"]
               for d in claims.values())
    for name, kind in (("learner.yaml", "StatefulSet"), ("actors.yaml", "Deployment")):
        for volume in pod_spec(name, kind)["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, (name, volume)


def test_the_image_is_built_by_the_dockerfile_with_pinned_versions():
    text = (ROOT / "Dockerfile").read_text()
    tags = set(re.findall(r"docker build -t (\S+)", text))
    for name, kind in (("learner.yaml", "StatefulSet"), ("actors.yaml", "Deployment")):
        for container in pod_spec(name, kind)["containers"]:
            assert container["image"] in tags, f"{name}: {container['image']} is not what the Dockerfile builds"
            assert not container["image"].endswith(":latest")
    # both builds, chosen by one build argument, and every version pinned (== or an ARG holding one)
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M) and re.search(r"^\s+cpu\)", text, re.M) and \
        re.search(r"^\s+cuda\)", text, re.M)
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-\S+$", text, re.M)
    for spec in re.findall(r'"((?:torch|vllm|deepspeed)[^"]*)"', text):
        assert re.fullmatch(r"[a-z]+==\$\{[A-Z_]+\}", spec), spec
        assert re.search(rf"^ARG {spec.split('{')[1].rstrip('}')}=\d+(\.\d+)+$", text, re.M), spec
    for copied in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in copied.split():
            assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which does not exist"


KUBERNETES_VERSIONS = ("1.30", "1.37")  # the oldest release still widely run and the newest the validator knows


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml")))
def test_manifests_are_valid_against_the_kubernetes_schemas(name):
    """Every resource against the API's OpenAPI schemas, strict: an unknown or misspelt field fails too."""
    import kubernetes_validate as kv

    for doc in documents(name):
        for version in KUBERNETES_VERSIONS:
            kv.validate(doc, version, strict=True)


def test_the_schema_check_catches_a_misspelt_field_and_a_wrong_type():
    import kubernetes_validate as kv

    doc = next(d for d in documents("learner.yaml") if d["kind"] == "StatefulSet")
    misspelt = {**doc, "spec": {**doc["spec"], "replica": 1}}
    with pytest.raises(kv.ValidationError, match="replica"):
        kv.validate(misspelt, KUBERNETES_VERSIONS[-1], strict=True)
    wrong_type = {**doc, "spec": {**doc["spec"], "replicas": "one"}}
    with pytest.raises(kv.ValidationError):
        kv.validate(wrong_type, KUBERNETES_VERSIONS[-1], strict=True)
