"""deploy/k8s, offline: the rendered overlays are valid Kubernetes objects and keep the properties the deployment
relies on (rollouts that keep serving, probes on /ping, one GPU per NUMBER_OF_GPU, TorchServe's own token auth
off only behind the sidecar, the token only from a Secret, the scrape annotation), and the custom resources that
no schema here knows (Kubeflow PyTorchJob, Prometheus Operator ServiceMonitor, KubeRay RayService, KServe
InferenceService) are checked for their structure, the standard objects inside them (pod templates, Service)
against the Kubernetes schemas.

Rendering needs kubectl (`kubectl kustomize`, kustomize v5; `make test` installs it through
scripts/ensure_test_tools.sh); schema validation needs kubernetes-validate (constraints.txt, `make install`). Without
kubectl the rendering tests skip with the reason (fail under CI=true); the files themselves are always parsed and
checked (test_files_parse_*). Target: Kubernetes 1.32, which the tests validate against, and 1.30,
the oldest release with the preStop `sleep` action the Deployment uses.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate as kv
import pytest
import yaml

from tests.conftest import tool_missing
from textclf.core import paths
from textclf.torchserve import container
from textclf.torchserve.properties import DEFAULT_PORTS, read_properties

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSIONS = ("1.32", "1.30")
SECRET, SECRET_KEY = "textclf-token", "token"
# Keys of config.properties that textclf/torchserve/container.py derives from the environment: the ConfigMap must not hold
# them, since the entry point overwrites them.
CONTRACT_KEYS = {"inference_address", "management_address", "metrics_address", "grpc_inference_address",
                 "grpc_inference_port", "grpc_management_address", "grpc_management_port", "model_store",
                 "load_models", "disable_token_authorization", "number_of_gpu"}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        tool_missing("kubectl not installed: cannot render the kustomize overlays (the files are still parsed by "
                     "test_files_parse_*); install kubectl >= 1.27 (kustomize v5)")
    return path


def kustomize(directory: Path) -> list[dict]:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def containers(deployment: dict) -> dict[str, dict]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def env(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def env_value(c: dict, name: str) -> str | None:
    return env(c).get(name, {}).get("value")


def sidecars(deployment: dict) -> list[dict]:
    """Containers that check the shared token: TEXTCLF_TOKEN comes from the Secret."""
    return [c for c in containers(deployment).values()
            if env(c).get("TEXTCLF_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")]


def torchserve(deployment: dict) -> dict:
    return containers(deployment)["torchserve"]


def _loopback(address: str | None) -> bool:
    return address is not None and container._loopback(address)


def assert_auth_is_consistent(deployment: dict) -> None:
    """TorchServe's own token authorization may be off only where nothing but the sidecar reaches it: bound to
    loopback, with no port of its own, and a sidecar in the pod checking the Secret's token."""
    ts = torchserve(deployment)
    token_off = (env_value(ts, "TOKEN_AUTH") or "on").lower() == "off"
    if token_off:
        assert _loopback(env_value(ts, "BIND_ADDRESS")), "TOKEN_AUTH=off needs BIND_ADDRESS on loopback"
        assert not ts.get("ports"), "TorchServe on loopback must not declare pod ports"
        assert sidecars(deployment), "TOKEN_AUTH=off without an auth sidecar in the pod"
    if sidecars(deployment):  # a sidecar in front of a TorchServe others can reach directly would be pointless
        assert _loopback(env_value(ts, "BIND_ADDRESS")), "the sidecar is bypassed: TorchServe is not on loopback"
        for c in sidecars(deployment):
            ref = env(c)["TEXTCLF_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (SECRET, SECRET_KEY) and not ref.get("optional", False)


# --- schema validation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_is_valid_kubernetes(rendered, overlay, version):
    kinds = []
    for doc in rendered[overlay]:
        kv.validate(doc, version, strict=True)  # strict: unknown fields (typos) are errors too
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                             "PodDisruptionBudget", "Service"]


def test_validation_rejects_a_typo_and_a_wrong_type(rendered):
    """The validator really checks: a misspelt probe and a string replica bound are refused."""
    deployment = one(rendered["cpu"], "Deployment")
    typo = copy.deepcopy(deployment)
    ts = containers(typo)["torchserve"]
    ts["readinesProbe"] = ts.pop("readinessProbe")
    wrong = copy.deepcopy(one(rendered["cpu"], "HorizontalPodAutoscaler"))
    wrong["spec"]["minReplicas"] = "two"
    for doc in (typo, wrong):
        with pytest.raises(kv.ValidationError):
            kv.validate(doc, KUBERNETES_VERSIONS[0], strict=True)


# --- rollout, probes, scaling ------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rollout_keeps_serving(rendered, overlay):
    deployment = one(rendered[overlay], "Deployment")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0 and strategy["rollingUpdate"]["maxSurge"] == 1
    # The HPA owns the replica count: a replicas field would reset it on every apply.
    assert "replicas" not in deployment["spec"]
    hpa, pdb = one(rendered[overlay], "HorizontalPodAutoscaler"), one(rendered[overlay], "PodDisruptionBudget")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]  # a drain never empties the Service
    # Utilization needs a CPU request on every container of the pod.
    assert all("cpu" in c["resources"]["requests"] for c in containers(deployment).values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_torchserve_ping_through_the_probe_listener(rendered, overlay):
    deployment = one(rendered[overlay], "Deployment")
    ts, (proxy,) = torchserve(deployment), sidecars(deployment)
    probe_port = next(p["containerPort"] for p in proxy["ports"] if p["name"] == "metrics")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ts[kind]["httpGet"] == {"path": "/ping", "port": probe_port}, kind
    assert int(env_value(proxy, "TEXTCLF_PROBE_PORT")) == probe_port
    # The start-up probe waits at least as long as the entry point gives TorchServe to load every archive.
    startup = ts["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= int(container.DEFAULTS["START_TIMEOUT_S"])
    # Stopping: the preStop pause, then the entry point's stop, fit in the grace period.
    pod = deployment["spec"]["template"]["spec"]
    pause = ts["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + container.STOP_TIMEOUT_S
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"


# --- authentication --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_torchserve_token_auth_off_only_behind_the_sidecar(rendered, overlay):
    deployment = one(rendered[overlay], "Deployment")
    ts = torchserve(deployment)
    assert env_value(ts, "BIND_ADDRESS") == "127.0.0.1" and env_value(ts, "TOKEN_AUTH") == "off"
    assert len(sidecars(deployment)) == 1
    assert_auth_is_consistent(deployment)


def test_auth_check_fails_on_unsafe_variants(rendered):
    """assert_auth_is_consistent is not vacuous: each way of opening TorchServe is caught."""
    deployment = one(rendered["cpu"], "Deployment")

    def variant(change):
        d = copy.deepcopy(deployment)
        change(d)
        return d

    def drop_sidecar(d):
        d["spec"]["template"]["spec"]["containers"] = [torchserve(d)]

    def bind_all(d):
        env(torchserve(d))["BIND_ADDRESS"]["value"] = "0.0.0.0"

    def literal_token(d):
        token = env(sidecars(d)[0])["TEXTCLF_TOKEN"]
        token.pop("valueFrom")
        token["value"] = "0f" * 16

    def other_secret(d):
        env(sidecars(d)[0])["TEXTCLF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] = "elsewhere"

    for change in (drop_sidecar, bind_all, literal_token, other_secret):
        with pytest.raises(AssertionError):
            assert_auth_is_consistent(variant(change))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_token_only_from_a_secret_that_the_repository_does_not_hold(rendered, overlay):
    docs = rendered[overlay]
    assert not [d for d in docs if d["kind"] == "Secret"]
    deployment = one(docs, "Deployment")
    for c in containers(deployment).values():
        for e in c.get("env", []):
            if re.search(r"TOKEN|KEY|SECRET|PASSWORD", e["name"]) and e["name"] != "TOKEN_AUTH":
                assert "value" not in e and e["valueFrom"]["secretKeyRef"]["name"] == SECRET, e
    for path in K8S.rglob("kustomization.yaml"):
        assert "secretGenerator" not in yaml.safe_load(path.read_text()), path


def test_no_key_is_committed_under_deploy_k8s():
    """Nothing under deploy/k8s looks like a token (`openssl rand -hex 32`, base64 of 24+ bytes)."""
    def looks_like_a_key(word: str) -> bool:
        hexadecimal = re.fullmatch(r"[0-9a-fA-F]+", word) is not None
        mixed = all(re.search(c, word) for c in (r"\d", "[a-z]", "[A-Z]"))
        return bool(re.search(r"\d", word)) and (hexadecimal or mixed)

    for path in K8S.rglob("*"):
        if path.is_file():
            hits = [w for w in re.findall(r"[A-Za-z0-9_+=-]{32,}", path.read_text()) if looks_like_a_key(w)]
            assert not hits, (path, hits)
    assert looks_like_a_key("0f" * 16) and looks_like_a_key("Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFi")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sidecar_is_wired_to_its_template_and_to_torchserve(rendered, overlay):
    docs = rendered[overlay]
    deployment = one(docs, "Deployment")
    (proxy,) = sidecars(deployment)
    template = (BASE / "nginx" / "textclf.conf.template").read_text()
    used = set(re.findall(r"\$\{(TEXTCLF_\w+)\}", template))
    # Every variable the template uses is set (nginx would refuse an unrendered ${...}), and only ours are rendered.
    assert used <= set(env(proxy)) and env_value(proxy, "NGINX_ENVSUBST_FILTER") == "^TEXTCLF_"
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert int(env_value(proxy, "TEXTCLF_HTTP_PORT")) == ports["http"]
    assert int(env_value(proxy, "TEXTCLF_GRPC_PORT")) == ports["grpc"]
    # Upstreams: TorchServe's fixed ports of the image contract, which must differ from the sidecar's own.
    assert int(env_value(proxy, "TEXTCLF_TS_INFERENCE_PORT")) == DEFAULT_PORTS["inference"]
    assert int(env_value(proxy, "TEXTCLF_TS_GRPC_PORT")) == DEFAULT_PORTS["grpc_inference"]
    assert int(env_value(proxy, "TEXTCLF_TS_METRICS_PORT")) == DEFAULT_PORTS["metrics"]
    assert not set(ports.values()) & set(DEFAULT_PORTS.values())
    # The files reach the image's entry point where it looks for them, the token check executable.
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert mounts["/etc/nginx/templates/textclf.conf.template"]["subPath"] == "textclf.conf.template"
    assert mounts["/etc/nginx/nginx.conf"]["subPath"] == "nginx.conf"
    check = mounts["/docker-entrypoint.d/05-check-token.sh"]
    assert check["subPath"] == "check-token.sh" and volumes[check["name"]]["configMap"]["defaultMode"] & 0o111
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    files = configmaps[volumes[check["name"]]["configMap"]["name"]]["data"]
    for name in ("textclf.conf.template", "nginx.conf", "check-token.sh"):
        assert files[name] == (BASE / "nginx" / name).read_text()
    assert "emptyDir" in volumes[mounts["/etc/nginx/conf.d"]["name"]]  # hides the image's default.conf
    assert proxy["securityContext"]["readOnlyRootFilesystem"] and "emptyDir" in volumes[mounts["/tmp"]["name"]]


# --- metrics, Service ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_scrape_annotation_and_service(rendered, overlay):
    docs = rendered[overlay]
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    (proxy,) = sidecars(deployment)
    metrics_port = next(p["containerPort"] for p in proxy["ports"] if p["name"] == "metrics")
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    # The contract's port numbers outside, the sidecar's listeners inside; management not exposed at all.
    assert {n: (p["port"], p["targetPort"]) for n, p in ports.items()} == {
        "http": (DEFAULT_PORTS["inference"], "http"), "grpc": (DEFAULT_PORTS["grpc_inference"], "grpc"),
        "metrics": (DEFAULT_PORTS["metrics"], "metrics")}
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0].get("metrics_path", "/metrics") == annotations["prometheus.io/path"]


def test_servicemonitor_component_scrapes_the_service_metrics_port(tmp_path):
    overlay = tmp_path / "with-monitor"
    overlay.mkdir()
    rel = lambda p: os.path.relpath(p, overlay)  # noqa: E731 - kustomize refuses absolute paths
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        # As a user adds it: to an overlay, which also sets the namespace.
        "namespace": yaml.safe_load((K8S / "overlays" / "cpu" / "kustomization.yaml").read_text())["namespace"],
        "resources": [rel(K8S / "overlays" / "cpu")], "components": [rel(K8S / "components" / "servicemonitor")]}))
    docs = kustomize(overlay)
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"


# --- devices ---------------------------------------------------------------------------------------------------

def test_gpu_overlay_requests_as_many_gpus_as_torchserve_uses(rendered):
    ts = torchserve(one(rendered["gpu"], "Deployment"))
    gpus = int(ts["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus >= 1 and int(env_value(ts, "NUMBER_OF_GPU")) == gpus
    assert int(ts["resources"].get("requests", {}).get("nvidia.com/gpu", gpus)) == gpus
    assert ts["image"].endswith(":latest-cuda")  # a CUDA build of the image; the CPU build's torch has none


def test_cpu_overlay_uses_no_gpu(rendered):
    ts = torchserve(one(rendered["cpu"], "Deployment"))
    assert env_value(ts, "NUMBER_OF_GPU") == "0"
    assert not any("nvidia.com/gpu" in ts["resources"].get(k, {}) for k in ("limits", "requests"))


# --- images, model store, TorchServe config ----------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_and_model_store(rendered, overlay):
    deployment = one(rendered[overlay], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert torchserve(deployment)["image"].split(":")[0] == "textclf-torchserve"
    (init,) = pod["initContainers"]
    store = env_value(torchserve(deployment), "MODEL_STORE")
    assert store == container.DEFAULTS["MODEL_STORE"]
    ts_mounts = {m["mountPath"]: m["name"] for m in torchserve(deployment)["volumeMounts"]}
    init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    # The init container fills the very volume that TorchServe loads as its model store.
    assert ts_mounts[store] in init_mounts and init_mounts[ts_mounts[store]] in " ".join(init["command"])
    assert init["image"].split(":")[0] == "textclf-models"
    images = {i["name"] for i in yaml.safe_load((BASE / "kustomization.yaml").read_text())["images"]}
    assert {"textclf-torchserve", "textclf-models", "nginxinc/nginx-unprivileged"} <= images


def test_torchserve_configmap_replaces_the_image_base_config(rendered):
    docs = rendered["cpu"]
    deployment = one(docs, "Deployment")
    mount = next(m for m in torchserve(deployment)["volumeMounts"] if m.get("subPath") == "config.properties")
    # Where the image keeps the config its entry point starts from (deploy/Dockerfile copies the repo's into /opt/app).
    assert Path(mount["mountPath"]).name == paths.LOCKED_CONFIG.name
    dockerfile = ROOT / "deploy" / "Dockerfile"
    if dockerfile.exists():
        copies = [line for line in dockerfile.read_text().splitlines()
                  if line.startswith("COPY") and paths.LOCKED_CONFIG.name in line]
        assert copies and copies[0].split()[-1].rstrip("/") == str(Path(mount["mountPath"]).parent), copies
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    data = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"])
    props = {}
    for line in data["data"]["config.properties"].splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    locked = read_properties(paths.LOCKED_CONFIG)
    assert props["enable_model_api"] == "false"  # locked mode
    assert not props.keys() & CONTRACT_KEYS, "the entry point overwrites these from the environment"
    assert props.keys() <= locked.keys(), props.keys() - locked.keys()
    assert {k: locked[k] for k in props} == props
    # Every tunable of the locked config is either here or owned by the environment contract.
    assert locked.keys() <= props.keys() | CONTRACT_KEYS, locked.keys() - props.keys() - CONTRACT_KEYS


# --- the files themselves (no kubectl needed) ----------------------------------------------------------------

def _yaml_files():
    return sorted(p for p in K8S.rglob("*.yaml"))


def test_files_parse_and_name_their_kinds():
    """The fallback without kubectl: every file parses, every object names apiVersion, kind and metadata.name,
    and the base's plain resources validate against the schema as they stand."""
    kinds = {}
    for path in _yaml_files():
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind"), path
            if doc["kind"] not in ("Kustomization", "Component"):
                assert doc["metadata"]["name"], path
            kinds.setdefault(doc["kind"], []).append(path.relative_to(K8S))
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PyTorchJob",
            "ServiceMonitor", "RayService", "InferenceService", "Kustomization", "Component"} <= kinds.keys()
    base = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    for resource in base["resources"]:
        assert (BASE / resource).is_file(), resource
    for generator in base["configMapGenerator"]:
        for entry in generator["files"]:
            assert (BASE / entry.split("=", 1)[-1]).is_file(), entry
    for resource in base["resources"]:
        for doc in yaml.safe_load_all((BASE / resource).read_text()):
            kv.validate(doc, KUBERNETES_VERSIONS[0], strict=True)


# --- training: Kubeflow PyTorchJob ---------------------------------------------------------------------------

def test_pytorchjob_runs_torchrun_over_master_and_worker():
    (job,) = yaml.safe_load_all((K8S / "train" / "pytorchjob.yaml").read_text())
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"} and specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] >= 1
    nproc = int(job["spec"]["nprocPerNode"])
    processes = nproc * (specs["Master"]["replicas"] + specs["Worker"]["replicas"])
    assert processes == 2
    claims, outputs = set(), set()
    for role, spec in specs.items():
        pod = spec["template"]["spec"]
        (c,) = [c for c in pod["containers"] if c["name"] == "pytorch"]  # the operator's container name
        # torchrun takes nnodes, node rank and the master from the operator's PET_* variables.
        assert c["command"][0] == "torchrun" and c["command"][-2:] == ["-m", "training.train"]
        assert c["command"][c["command"].index("--nproc-per-node") + 1] == str(nproc)
        args = dict(zip(c["args"][::2], c["args"][1::2], strict=False))
        assert int(args["--batch-size"]) % processes == 0  # training.train refuses a batch that does not split
        outputs.add(args["--output-dir"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        mount = next(m for m in c["volumeMounts"] if args["--output-dir"].startswith(m["mountPath"] + "/"))
        claims.add(volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
        assert spec["restartPolicy"] in ("OnFailure", "Never", "ExitCode")
        # The pod template itself is a valid Kubernetes pod template.
        kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()},
                     "template": spec["template"]}, KUBERNETES_VERSIONS[0], strict=True)
    # One run directory for all: rank 1 loads the best checkpoint that rank 0 saved.
    assert len(outputs) == 1 and len(claims) == 1


# --- Ray Serve on KubeRay: deploy/k8s/ray -------------------------------------------------------------------------
# KubeRay's CRD (ray.io/v1 RayService) is in none of kubernetes-validate's offline schemas, which hold only
# Kubernetes' own kinds: its structure is checked by hand here, and what is standard inside it (the pod templates of
# the head and the workers, the serve Service) is validated against the Kubernetes schemas.

RAY = K8S / "ray"
RAY_APP = "textclf.rayserve.app"
SERVE_PORT = 8000  # Ray Serve's HTTP port inside the pods (http_options.port)


@pytest.fixture(scope="module")
def rayservice() -> dict:
    (doc,) = [d for d in yaml.safe_load_all((RAY / "rayservice.yaml").read_text()) if d]
    return doc


def ray_groups(rayservice: dict) -> dict[str, dict]:
    """The head group and each worker group, by role ("head", "worker-GROUP")."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"],
            **{f"worker-{g['groupName']}": g for g in cluster["workerGroupSpecs"]}}


def serve_config(rayservice: dict) -> dict:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def _pinned(name: str) -> str:
    return next(line.split("==", 1)[1].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
                if _canon(line.split("==", 1)[0]) == name and "==" in line)


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def test_rayservice_is_a_kuberay_rayservice_on_the_pinned_ray(rayservice):
    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == _pinned("ray")  # the Ray inside the image
    assert cluster["enableInTreeAutoscaling"] is True
    assert rayservice["spec"]["upgradeStrategy"]["type"] == "NewCluster"  # a new image: a new cluster, then switch


def test_serve_config_deploys_one_model_app_per_archive_and_the_ingress(rayservice):
    pytest.importorskip("ray")  # the ray extra: part of the dev install
    from textclf.rayserve.app import INGRESS_ARGS
    from textclf.rayserve.shape import MODEL_ARGS, app_name

    config = serve_config(rayservice)  # serveConfigV2 is a YAML document inside a string
    apps = config["applications"]
    assert len({a["name"] for a in apps}) == len(apps)
    assert {a["import_path"] for a in apps} == {f"{RAY_APP}:model_app", f"{RAY_APP}:ingress_app"}
    (ingress,) = [a for a in apps if a["import_path"] == f"{RAY_APP}:ingress_app"]
    models = [a for a in apps if a["import_path"] == f"{RAY_APP}:model_app"]
    assert ingress["route_prefix"] == "/" and models
    assert config["http_options"]["port"] == SERVE_PORT
    served: dict[str, list[str]] = {}
    for app in models:
        args = app["args"]
        name, version = args["name"], args["version"]
        assert isinstance(version, str), app  # "1.0", not the float 1.0
        assert app["route_prefix"] is None  # reached only through the ingress, which checks the token
        assert app["name"] == app_name(name, version)  # where the ingress looks for it
        assert args.keys() <= MODEL_ARGS, args.keys() - MODEL_ARGS
        # The archive `make archive NAME= VERSION=` writes, in the store the init container fills.
        assert args["source"] == f"{container.DEFAULTS['MODEL_STORE']}/{name}-{version}.mar"
        assert 1 <= args["min_replicas"] <= args["max_replicas"] and args["threads"] >= 1
        served.setdefault(name, []).append(version)
    assert ingress["args"].keys() <= INGRESS_ARGS
    routes = ingress["args"]["models"]
    assert {n: sorted(m["versions"]) for n, m in routes.items()} == {n: sorted(v) for n, v in served.items()}
    assert all(m["default"] in m["versions"] for m in routes.values())
    # Ray Serve's own schema accepts it.
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)


def test_ray_pods_are_valid_non_root_and_get_the_store_and_the_key_file(rayservice):
    key_file = Path(next(a for a in serve_config(rayservice)["applications"]
                         if a["import_path"].endswith(":ingress_app"))["args"]["key_file"])
    assert key_file.name == "key_file.json"  # the Secret's key in docs/deploy.md's `kubectl create secret`
    store = container.DEFAULTS["MODEL_STORE"]
    for role, group in ray_groups(rayservice).items():
        template = group["template"]
        kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role}, "template": template},
                    KUBERNETES_VERSIONS[0], strict=True)
        pod = template["spec"]
        (ray,) = pod["containers"]  # KubeRay adds the autoscaler to the head itself
        assert ray["image"].split(":")[0] == "textclf-torchserve", role
        assert "SERVER" not in env(ray)  # KubeRay replaces the entry point with `ray start`
        assert {"cpu", "memory"} <= ray["resources"]["requests"].keys() and "memory" in ray["resources"]["limits"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
        assert ray["securityContext"]["allowPrivilegeEscalation"] is False
        assert ray["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # The init container fills the very volume mounted as the model store.
        mounts = {m["mountPath"]: m for m in ray["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        (init,) = pod["initContainers"]
        init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        assert init["image"].split(":")[0] == "textclf-models"
        assert init_mounts[mounts[store]["name"]] in " ".join(init["command"]) and mounts[store]["readOnly"]
        # The key file comes from the Secret, mounted read-only where the ingress's key_file points.
        keys = mounts[str(key_file.parent)]
        assert keys["readOnly"] and volumes[keys["name"]]["secret"]["secretName"] == "textclf-ray-keys"
        # httpGet probes: KubeRay's default ones run wget, which the image lacks.
        for probe in ("readinessProbe", "livenessProbe"):
            assert "httpGet" in ray[probe], (role, probe)


def test_ray_probes_and_autoscaling_bounds(rayservice):
    groups = ray_groups(rayservice)
    head = groups.pop("head")
    (ray_head,) = head["template"]["spec"]["containers"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no replicas on the head
    assert {p["name"]: p["containerPort"] for p in ray_head["ports"]}["serve"] == SERVE_PORT
    # KubeRay submits serveConfigV2 only once the head is ready: its readiness must not wait for the applications.
    assert ray_head["readinessProbe"]["httpGet"]["path"] not in ("/ready", "/ping")
    cpu_overlay = yaml.safe_load((K8S / "overlays" / "cpu" / "resources.yaml").read_text())
    ts_requests = cpu_overlay["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    hpa = yaml.safe_load((BASE / "hpa.yaml").read_text())["spec"]
    assert groups
    for role, group in groups.items():
        (worker,) = group["template"]["spec"]["containers"]
        ready = worker["readinessProbe"]["httpGet"]
        assert ready["path"] in ("/ready", "/ping") and ready["port"] in ("serve", SERVE_PORT), role
        assert {p["name"]: p["containerPort"] for p in worker["ports"]}["serve"] == SERVE_PORT
        # Sized like the TorchServe layout: the cpu overlay's requests, the HPA's bounds.
        assert worker["resources"]["requests"] == ts_requests
        assert group["rayStartParams"]["num-cpus"] == worker["resources"]["requests"]["cpu"]
        assert (group["minReplicas"], group["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_ray_serve_service_is_a_valid_service_on_the_inference_port(rayservice):
    spec = rayservice["spec"]
    service = {"apiVersion": "v1", "kind": "Service", **copy.deepcopy(spec["serveService"])}
    kv.validate(service, KUBERNETES_VERSIONS[0], strict=True)  # KubeRay adds the selector itself
    (port,) = service["spec"]["ports"]
    assert port["name"] == "serve" and port["targetPort"] == "serve"  # KubeRay keeps a user port of this name
    assert port["port"] == DEFAULT_PORTS["inference"]  # as the TorchServe layout's Service: only the host changes
    assert service["metadata"]["name"] != yaml.safe_load((BASE / "service.yaml").read_text())["metadata"]["name"]
    assert spec["excludeHeadPodFromServeSvc"] is True


def test_ray_layout_renders_with_namespace_and_images():
    docs = kustomize(RAY)
    rs = one(docs, "RayService")
    assert [d["kind"] for d in docs] == ["NetworkPolicy", "RayService"]  # no Secret: the repository never holds keys
    assert rs["metadata"]["namespace"] == "textclf"
    images = {c["image"] for g in ray_groups(rs).values() for key in ("containers", "initContainers")
              for c in g["template"]["spec"][key]}
    assert images == {"textclf-torchserve:latest", "textclf-models:latest"}


def test_ray_network_policy_opens_only_the_serve_port_to_clients(rayservice):
    policy = yaml.safe_load((RAY / "networkpolicy.yaml").read_text())
    kv.validate(policy, KUBERNETES_VERSIONS[0], strict=True)
    spec = policy["spec"]
    pod_labels = ray_groups(rayservice)["head"]["template"]["metadata"]["labels"]
    assert all(g["template"]["metadata"]["labels"] == pod_labels for g in ray_groups(rayservice).values())
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items() and spec["policyTypes"] == ["Ingress"]
    open_to_all = [r for r in spec["ingress"] if "from" not in r]
    assert [[p["port"] for p in r["ports"]] for r in open_to_all] == [[SERVE_PORT]]
    peers = [r for r in spec["ingress"] if "from" in r]
    own = [r for r in peers if r["from"] == [{"podSelector": spec["podSelector"]}]]
    assert len(own) == 1 and "ports" not in own[0]  # Ray's traffic inside the cluster, any port
    (operator,) = [r for r in peers if r not in own]
    assert [p["port"] for p in operator["ports"]] == [8265]  # the dashboard, for KubeRay's operator alone
    assert operator["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}


# --- KServe: the image as a custom container, no KServe TorchServe runtime -----------------------------------------
# KServe's CRD is in no offline schema either: structure by hand, the predictor's pod spec against the schemas.

KSERVE = K8S / "kserve"
# Fields of the predictor that are KServe's own (ComponentExtensionSpec), not the pod spec's.
KSERVE_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "timeout", "containerConcurrency",
                 "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy"}


def entry_script_servers() -> set[str]:
    """The values of SERVER that deploy/entrypoint.sh starts a server for."""
    return set(re.findall(r"^\s+([a-z]+)\) exec ", (ROOT / "deploy" / "entrypoint.sh").read_text(), flags=re.M))


@pytest.fixture(scope="module")
def isvc() -> dict:
    (doc,) = [d for d in yaml.safe_load_all((KSERVE / "inferenceservice.yaml").read_text()) if d]
    return doc


def test_kserve_runs_our_image_without_a_kserve_runtime(isvc):
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    predictor = isvc["spec"]["predictor"]
    assert "model" not in predictor  # no modelFormat, no runtime: the custom container is the server
    assert "pytorch" not in json.dumps(isvc).lower()
    kinds = {d["kind"] for path in KSERVE.rglob("*.yaml") for d in yaml.safe_load_all(path.read_text()) if d}
    assert not kinds & {"ServingRuntime", "ClusterServingRuntime"}
    (c,) = predictor["containers"]
    assert c["name"] == "kserve-container"  # where KServe puts STORAGE_URI's download
    assert c["image"].split(":")[0] == "textclf-torchserve"
    assert env_value(c, "SERVER") in entry_script_servers() == {"torchserve", "ray"}
    assert [p["containerPort"] for p in c["ports"]] == [DEFAULT_PORTS["inference"]]
    assert re.match(r"^(s3|gs|pvc|https?)://", env_value(c, "STORAGE_URI"))
    assert env_value(c, "MODEL_STORE") == "/mnt/models"  # KServe's download folder
    assert c["readinessProbe"]["httpGet"] == {"path": "/ping", "port": DEFAULT_PORTS["inference"]}
    assert "textclf.torchserve.ops health" in " ".join(c["livenessProbe"]["exec"]["command"])
    assert 2 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert c["securityContext"]["runAsNonRoot"] and c["securityContext"]["runAsUser"] != 0
    assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
    pod = {k: v for k, v in predictor.items() if k not in KSERVE_FIELDS}
    kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "predictor"},
                 "template": {"spec": pod}}, KUBERNETES_VERSIONS[0], strict=True)


def test_kserve_environment_follows_the_image_contract(isvc, tmp_path):
    (c,) = isvc["spec"]["predictor"]["containers"]
    settings = {name: e["value"] for name, e in env(c).items() if "value" in e}
    (tmp_path / "classifier-1.0.mar").write_bytes(b"")
    # The entry point accepts these settings (with a store holding an archive in place of the download).
    cfg = container.server_config({**settings, "MODEL_STORE": str(tmp_path)})
    assert cfg.endpoints().inference_url.endswith(f":{DEFAULT_PORTS['inference']}")
    # Token authorization off only on loopback, and only where Knative's queue-proxy in the pod is the way in.
    if settings.get("TOKEN_AUTH", "on").lower() == "off":
        assert _loopback(settings.get("BIND_ADDRESS"))
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"


def test_kserve_layout_renders_with_namespace_and_image():
    (rendered,) = kustomize(KSERVE)
    assert rendered["kind"] == "InferenceService" and rendered["metadata"]["namespace"] == "textclf"
    (c,) = rendered["spec"]["predictor"]["containers"]
    assert c["image"] == "textclf-torchserve:latest"
