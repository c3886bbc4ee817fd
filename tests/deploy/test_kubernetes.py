"""deploy/kubernetes: the base and every overlay render (with a renderer of the few kustomize features they use),
every object validates against the Kubernetes API's schemas in strict mode, and the manifests agree with the
server: real `serve` flags and settings, gRPC health probes on the served port, a grace period that covers the
drain, an autoscaler on a gauge the server exports, a disruption budget over the server's pods only, the stores'
URLs from a Secret, limits on every container, no host namespaces, privileges where the server needs them only."""

from __future__ import annotations

import copy
import functools
import inspect
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import typer.main
import yaml

from sandbox_server import server as grpc_server
from sandbox_server.__main__ import cli
from sandbox_server.backends import native, warm
from sandbox_server.incidents import manager as incidents_manager
from sandbox_server.policy.loader import load_directory
from sandbox_server.settings import Settings, is_loopback, load_settings
from sandbox_server.telemetry import build_telemetry

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
DOCS = ROOT / "docs" / "kubernetes.md"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
OVERLAYS = ("overlays/production", "overlays/in-cluster-data")
KUSTOMIZATIONS = ("base", *OVERLAYS)
# The oldest release whose API has every field the manifests use (securityContext.appArmorProfile came in 1.30),
# and the newest whose schemas the installed kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30", "1.37")
NAMESPACE = "sandbox-server"
SERVER = "sandbox-server"  # the Deployment, its Service, PDB, HPA and ServiceAccount
SERVER_CONTAINER = "server"
STATE_SECRET = "sandbox-server-state"  # noqa: S105 - the Secret's name, not a credential
# What the Secret's keys hold, for building the server's settings from the manifest (never real credentials).
SECRET_SAMPLES = {
    "database-url": "postgresql://sandbox:sample@sandbox-postgres:5432/sandbox",
    "redis-url": "redis://:sample@sandbox-redis:6379/0",
    "postgres-password": "sample",
    "redis-password": "sample",
}
# The downward API's fields the manifests read, likewise.
FIELD_SAMPLES = {"status.podIP": "10.244.1.7"}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
PROBE_HANDLERS = ("grpc", "httpGet", "tcpSocket", "exec")
WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_CREDENTIALS_IN_URL = re.compile(r"\w+://[^/\s@'\"]*:[^/\s@'\"]+@")


# ------------------------------------------------------------------------------------------------------- the renderer


class KustomizeError(Exception):
    """A kustomization this renderer cannot render as kustomize would: it refuses rather than guesses."""


KUSTOMIZATION_FIELDS = frozenset({"apiVersion", "kind", "resources", "namespace", "images"})
IMAGE_FIELDS = frozenset({"name", "newName", "newTag", "digest"})
# Kinds kustomize's namespace transformer leaves without a namespace (a Namespace gets it as its name instead).
CLUSTER_SCOPED = frozenset({
    "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume", "PriorityClass",
    "StorageClass", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "RuntimeClass",
})


def render(directory: Path) -> list[Obj]:
    """What ``kubectl kustomize DIRECTORY`` prints, for a kustomization that uses only ``resources`` (files inside
    its directory, and directories holding a kustomization), ``namespace`` and ``images``; anything else is a
    KustomizeError."""
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict):
        raise KustomizeError(f"{path} is not a mapping")
    unsupported = sorted(set(spec) - KUSTOMIZATION_FIELDS)
    if unsupported:
        raise KustomizeError(f"{path}: this renderer does not implement {unsupported}")
    if spec.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or spec.get("kind") != "Kustomization":
        raise KustomizeError(f"{path}: not a kustomize.config.k8s.io/v1beta1 Kustomization")
    objects: list[Obj] = []
    for entry in spec.get("resources") or []:
        if not isinstance(entry, str) or "://" in entry or entry.startswith("github.com/"):
            raise KustomizeError(f"{path}: resource {entry!r} is not a local path")
        target = (directory / entry).resolve()
        if target.is_dir():
            objects += render(target)
        elif target.is_file():
            if not target.is_relative_to(directory.resolve()):
                # kustomize's default load restrictor: files only from the kustomization's own directory tree
                raise KustomizeError(f"{path}: file {entry} is outside the kustomization's directory")
            objects += [doc for doc in yaml.safe_load_all(target.read_text()) if doc is not None]
        else:
            raise KustomizeError(f"{path}: resource {entry} does not exist")
    namespace = spec.get("namespace")
    if namespace is not None:
        for obj in objects:
            _set_namespace(obj, str(namespace))
    for image in spec.get("images") or []:
        _set_image(objects, image, path)
    ids = [object_id(obj) for obj in objects]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise KustomizeError(f"{path}: objects defined more than once: {duplicates}")
    return objects


def object_id(obj: Obj) -> tuple[str, str, str]:
    metadata = obj.get("metadata") or {}
    return str(obj.get("kind")), str(metadata.get("namespace", "")), str(metadata.get("name"))


def _set_namespace(obj: Obj, namespace: str) -> None:
    metadata = obj.setdefault("metadata", {})
    if obj.get("kind") == "Namespace" and obj.get("apiVersion") == "v1":
        metadata["name"] = namespace
    elif obj.get("kind") not in CLUSTER_SCOPED:
        metadata["namespace"] = namespace


def _split_image(image: str) -> tuple[str, str]:
    """(name, the rest): ``registry:5000/a/b:tag@sha256:...`` -> (``registry:5000/a/b``, ``:tag@sha256:...``)."""
    name, at, digest = image.partition("@")
    repo, _, last = name.rpartition("/")
    if ":" in last:
        last, tag = last.split(":", 1)
        return (f"{repo}/{last}" if repo else last), f":{tag}{at}{digest}"
    return name, f"{at}{digest}"


def _set_image(objects: list[Obj], image: Any, path: Path) -> None:
    if not isinstance(image, dict) or "name" not in image or set(image) - IMAGE_FIELDS:
        raise KustomizeError(f"{path}: images entries take {sorted(IMAGE_FIELDS)} (name required): {image!r}")
    for container in _containers_anywhere(objects):
        name, rest = _split_image(str(container.get("image", "")))
        if name != image["name"]:
            continue
        if "digest" in image:
            rest = f"@{image['digest']}"
        elif "newTag" in image:
            rest = f":{image['newTag']}"
        container["image"] = f"{image.get('newName', name)}{rest}"


def _containers_anywhere(node: Any) -> Iterator[Obj]:
    """Every container of every pod spec in ``node``, at any depth (kustomize's image field specs)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers_anywhere(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers_anywhere(item)


@functools.cache
def _rendered(name: str) -> tuple[Obj, ...]:
    return tuple(render(KUBERNETES / name))


def rendered(name: str) -> list[Obj]:
    """A fresh copy of the rendering of ``deploy/kubernetes/<name>`` (tests may change it)."""
    return copy.deepcopy(list(_rendered(name)))


# ------------------------------------------------------------------------------------------------------------ helpers


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o.get("kind") == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o.get("kind") == kind]


def pod_templates(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, its pod template) for every workload."""
    for obj in objects:
        if obj.get("kind") in WORKLOADS:
            template = obj["spec"]["template"]
            assert isinstance(template, dict)
            yield obj, template


def all_containers(pod_spec: Obj) -> list[Obj]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def deployment(objects: list[Obj]) -> Obj:
    return one(objects, "Deployment", SERVER)


def server_container(objects: list[Obj]) -> Obj:
    containers = [c for c in deployment(objects)["spec"]["template"]["spec"]["containers"]
                  if c["name"] == SERVER_CONTAINER]
    assert len(containers) == 1
    container = containers[0]
    assert isinstance(container, dict)
    return container


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects an object with ``labels``."""
    if not selector:
        raise AssertionError("an empty selector selects everything")
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def container_port(container: Obj, port: int | str) -> int:
    """A container port by number or by name."""
    for entry in container.get("ports", []):
        if port in (entry["containerPort"], entry.get("name")):
            return int(entry["containerPort"])
    raise AssertionError(f"container {container['name']} has no port {port!r}")


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_SCALE = {None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}


def quantity(value: object) -> float:
    match = _QUANTITY.match(str(value))
    assert match, f"not a Kubernetes quantity: {value!r}"
    return float(match.group(1)) * _SCALE[match.group(2)]


def serve_command() -> Any:
    """``sandbox-server serve`` as typer builds it: a click command (its ``params``, ``make_context``) of the click
    typer carries."""
    commands = getattr(typer.main.get_command(cli), "commands", None)
    assert isinstance(commands, dict)
    assert "serve" in commands
    return commands["serve"]


def expand(text: str, env: dict[str, str]) -> str:
    """Kubelet's ``$(VAR)`` expansion in command and args; a reference to an undefined variable would be passed on
    as it is, which is never what a manifest here means."""
    def value(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"{text!r} refers to {match.group(1)}, which the container does not define"
        return env[match.group(1)]
    return _VAR_REF.sub(value, text)


def container_env(container: Obj) -> dict[str, str]:
    """The container's environment as the server would see it, Secret values replaced with samples."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = expand(str(entry["value"]), env)
        elif "fieldRef" in entry["valueFrom"]:
            field = entry["valueFrom"]["fieldRef"]["fieldPath"]
            assert field in FIELD_SAMPLES, f"{entry['name']}: no sample for the pod's {field}"
            env[entry["name"]] = FIELD_SAMPLES[field]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == STATE_SECRET, f"{entry['name']} comes from an unexpected Secret {ref['name']}"
            assert ref["key"] in SECRET_SAMPLES, f"no sample for the Secret's key {ref['key']}"
            env[entry["name"]] = SECRET_SAMPLES[ref["key"]]
    return env


def manifest_settings(objects: list[Obj], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The server's Settings from the manifest's args and environment, through the `serve` command's own parser
    and the server's own settings validation (nothing else of this process's environment counts)."""
    container = server_container(objects)
    env = container_env(container)
    args = [expand(arg, env) for arg in container["args"]]
    assert args[0] == "serve", f"the server container runs {args[0]!r}, not `sandbox-server serve`"
    for name in [n for n in os.environ if n.startswith("SANDBOX_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    params = dict(serve_command().make_context("serve", args[1:]).params)
    assert params.pop("config") is None, "a config file in the image would hide settings from this test"
    if params.get("log_level"):
        params["log_level"] = str(params["log_level"]).upper()
    return load_settings(**params)


def mount_for(container: Obj, pod_spec: Obj, path: Path) -> tuple[Obj, Obj]:
    """(the volume mount holding ``path``, its volume): the deepest mount at or above it."""
    mounts = [m for m in container.get("volumeMounts", []) if path.is_relative_to(m["mountPath"])]
    assert mounts, f"{path} is on no volume of container {container['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volumes = [v for v in pod_spec.get("volumes", []) if v["name"] == mount["name"]]
    assert len(volumes) == 1, f"volume {mount['name']} is not defined once"
    return mount, volumes[0]


@functools.cache
def exported_gauges() -> frozenset[str]:
    """The gauges in the server's Prometheus exposition, from its own meter with every instrument recorded once."""
    telemetry = build_telemetry(Settings.model_construct(max_running=1))  # defaults only: no environment
    try:
        for instrument in vars(telemetry.metrics).values():
            if hasattr(instrument, "add"):
                instrument.add(1)
            elif hasattr(instrument, "record"):
                instrument.record(1.0)
            elif hasattr(instrument, "set"):
                instrument.set(1.0)
        return frozenset(family.name for family in telemetry.registry.collect() if family.type == "gauge")
    finally:
        telemetry.shutdown()


# ------------------------------------------------------------------------------------------- the renderer's own tests


def _write(path: Path, docs: list[Obj]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs))


KUSTOMIZATION = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}


@pytest.mark.parametrize("field", ["patches", "commonLabels", "secretGenerator", "namePrefix", "replicas"])
def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path, field: str) -> None:
    _write(tmp_path / "kustomization.yaml", [{**KUSTOMIZATION, "resources": [], field: []}])
    with pytest.raises(KustomizeError, match=field):
        render(tmp_path)


def test_the_renderer_applies_namespace_and_images_as_kustomize_does(tmp_path: Path) -> None:
    pod = {"containers": [{"name": "a", "image": "sandbox-server:latest"}, {"name": "b", "image": "other:1"}],
           "initContainers": [{"name": "c", "image": "registry:5000/sandbox-server:old"}]}
    _write(tmp_path / "base" / "objects.yaml", [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "first"}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
         "spec": {"template": {"spec": pod}}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}},
    ])
    _write(tmp_path / "base" / "kustomization.yaml", [{**KUSTOMIZATION, "namespace": "first",
                                                       "resources": ["objects.yaml"]}])
    _write(tmp_path / "overlay" / "kustomization.yaml", [{
        **KUSTOMIZATION, "namespace": "second", "resources": ["../base"],
        "images": [{"name": "sandbox-server", "newName": "registry.example/sandbox-server", "newTag": "v2"}],
    }])
    objects = render(tmp_path / "overlay")
    assert one(objects, "Namespace", "second")["metadata"].get("namespace") is None
    assert one(objects, "Deployment", "d")["metadata"]["namespace"] == "second"
    assert "namespace" not in one(objects, "ClusterRole", "r")["metadata"]
    spec = one(objects, "Deployment", "d")["spec"]["template"]["spec"]
    assert [c["image"] for c in spec["containers"]] == ["registry.example/sandbox-server:v2", "other:1"]
    assert spec["initContainers"][0]["image"] == "registry:5000/sandbox-server:old"  # another name: untouched


def test_the_renderer_refuses_duplicates_and_files_from_outside(tmp_path: Path) -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    _write(tmp_path / "a" / "one.yaml", [config])
    _write(tmp_path / "a" / "two.yaml", [config])
    _write(tmp_path / "a" / "kustomization.yaml", [{**KUSTOMIZATION, "resources": ["one.yaml", "two.yaml"]}])
    with pytest.raises(KustomizeError, match="more than once"):
        render(tmp_path / "a")
    _write(tmp_path / "b" / "kustomization.yaml", [{**KUSTOMIZATION, "resources": ["../a/one.yaml"]}])
    with pytest.raises(KustomizeError, match="outside"):
        render(tmp_path / "b")


# -------------------------------------------------------------------------------------------------------- the schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_object_validates_against_the_kubernetes_api(name: str, version: str) -> None:
    objects = rendered(name)
    assert objects
    for obj in objects:
        try:
            validated = kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} at {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{name}: {exc.message} (custom resources belong outside the kustomizations)")
        assert validated == version, f"validated against {validated}, not {version}"


def test_strict_validation_refuses_an_unknown_field() -> None:
    obj = deployment(rendered("base"))
    kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)
    obj["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlays_extend_the_base_in_one_namespace(overlay: str) -> None:
    base, objects = rendered("base"), rendered(overlay)
    assert {object_id(o) for o in base} <= {object_id(o) for o in objects}
    assert one(objects, "Namespace", NAMESPACE)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, object_id(obj)
    statefulsets = {o["metadata"]["name"] for o in of_kind(objects, "StatefulSet")}
    assert statefulsets == ({"sandbox-postgres", "sandbox-redis"} if overlay.endswith("in-cluster-data") else set())


# ------------------------------------------------------------------------------------ the server's flags and settings


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_server_runs_serve_with_real_flags_only(name: str) -> None:
    container = server_container(rendered(name))
    assert container["command"][-1] == "sandbox-server"
    args = container["args"]
    assert args[0] == "serve"
    known = {opt for param in serve_command().params for opt in param.opts}
    given = [arg.split("=", 1)[0] for arg in args[1:]]
    assert all(flag.startswith("--") for flag in given), f"only --flag=value args: {args[1:]}"
    assert not set(given) - known, f"not flags of `sandbox-server serve`: {sorted(set(given) - known)}"
    assert len(given) == len(set(given)), "a flag given twice"
    for name_ in container_env(container):
        if name_.startswith("SANDBOX_"):
            field = name_.removeprefix("SANDBOX_").lower().split("__")[0]
            assert field in Settings.model_fields, f"{name_} is not a server setting"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_manifest_makes_valid_settings_that_require_api_keys(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = manifest_settings(rendered(name), monkeypatch)
    assert not settings.dev_mode, "a server reachable from the cluster must require API keys"
    assert not is_loopback(settings.host), "bound to loopback, the Service would reach nothing"
    assert settings.metrics_port is not None
    assert not is_loopback(settings.metrics_host)
    assert settings.database_url == SECRET_SAMPLES["database-url"]
    assert settings.redis_url == SECRET_SAMPLES["redis-url"]
    assert settings.tls_cert_file is None, "kubelet's gRPC probes speak plaintext"
    # Other replicas forward a session's calls to this address: the pod's own IP, on the served port.
    assert settings.advertise_address == f"{FIELD_SAMPLES['status.podIP']}:{settings.port}"


@pytest.mark.parametrize("name", OVERLAYS)
def test_keys_created_in_the_container_go_to_the_shared_database(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/kubernetes.md creates the first key with `kubectl exec ... sandbox-server keys create`: with nothing
    but the container's environment, the settings it loads name the same database as the server's flag."""
    objects = rendered(name)
    served = manifest_settings(objects, monkeypatch)
    assert load_settings().database_url == served.database_url


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_stores_urls_come_from_the_secret_only(name: str) -> None:
    objects = rendered(name)
    assert not of_kind(objects, "Secret"), "credentials are never in the repository: the operator creates the Secret"
    container = server_container(objects)
    env = {e["name"]: e for e in container["env"]}
    for flag in ("--database-url", "--redis-url"):
        values = [a.split("=", 1)[1] for a in container["args"] if a.startswith(f"{flag}=")]
        assert len(values) == 1, flag
        variable = _VAR_REF.fullmatch(values[0])
        assert variable, f"{flag} must be $(VAR) from the Secret, not {values[0]!r}"
        assert env[variable.group(1)]["valueFrom"]["secretKeyRef"]["name"] == STATE_SECRET
    text = yaml.safe_dump_all(objects)
    assert not _CREDENTIALS_IN_URL.search(text), "a URL with credentials in the manifests"
    for _, template in pod_templates(objects):
        for c in all_containers(template["spec"]):
            for entry in c.get("env", []):
                if re.search(r"PASSWORD|_URL$|SECRET", entry["name"]):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), f"{c['name']}: {entry['name']} is a literal"


def test_the_docs_create_the_secret_the_manifests_read() -> None:
    docs = DOCS.read_text()
    for overlay in OVERLAYS:
        objects = rendered(overlay)
        keys = {e["valueFrom"]["secretKeyRef"]["key"]
                for _, t in pod_templates(objects) for c in all_containers(t["spec"])
                for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        assert keys
        for key in keys:
            assert f"--from-literal={key}=" in docs, f"docs/kubernetes.md never sets the Secret's {key}"
        assert f"kubectl apply -k deploy/kubernetes/{overlay}" in docs
    # The in-cluster URLs the docs give name the Services the overlay makes, on their ports.
    for service in of_kind(rendered("overlays/in-cluster-data"), "Service"):
        if service["metadata"]["name"] != SERVER:
            port = service["spec"]["ports"][0]["port"]
            assert f"@{service['metadata']['name']}:{port}/" in docs


# ----------------------------------------------------------------------------------------------- ports, probes, drain


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_probes_are_grpc_health_checks_on_the_served_port(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = rendered(name)
    settings = manifest_settings(objects, monkeypatch)
    container = server_container(objects)
    assert container_port(container, "grpc") == settings.port
    for probe_name in PROBES:
        probe = container[probe_name]
        assert [h for h in PROBE_HANDLERS if h in probe] == ["grpc"], f"{probe_name} is not a gRPC probe"
        assert probe["grpc"]["port"] == settings.port
        # The server sets both "" and its service's name SERVING (app.py); a probe may ask for either.
        assert probe["grpc"].get("service", "") in ("", grpc_server.SERVICE_NAME)
    # The server registers grpc.health.v1 on its port (the probes would fail on a server without it).
    assert "add_HealthServicer_to_server" in inspect.getsource(grpc_server.build_server)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_service_and_the_scrape_target_are_the_servers_ports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = rendered(name)
    settings = manifest_settings(objects, monkeypatch)
    container = server_container(objects)
    template = deployment(objects)["spec"]["template"]
    service = one(objects, "Service", SERVER)
    assert selects({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"])
    targets = {p["name"]: container_port(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert targets == {"grpc": settings.port, "metrics": settings.metrics_port}
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port
    # A session lives on one replica: affinity keeps a client's connections there, so few calls are forwarded.
    assert service["spec"].get("sessionAffinity") == "ClientIP"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_grace_period_covers_the_drain_and_liveness_never_cuts_it(
    name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = rendered(name)
    settings = manifest_settings(objects, monkeypatch)
    assert "SANDBOX_DRAIN_TIMEOUT_S" in container_env(server_container(objects)), "say the drain time explicitly"
    pod = deployment(objects)["spec"]["template"]["spec"]
    container = server_container(objects)
    grace = pod["terminationGracePeriodSeconds"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    # SIGTERM comes after preStop; then the drain (App.stop), then the warm zygotes' and the incident queue's close.
    needed = pre_stop + settings.drain_timeout_s + warm.CLOSE_TIMEOUT_S + incidents_manager.CLOSE_TIMEOUT_S
    assert grace >= needed, f"terminationGracePeriodSeconds {grace} < {needed}"
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= native.BUILD_TIMEOUT_S + warm.READY_TIMEOUT_S


# ------------------------------------------------------------------------------------------- resources and privileges


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_container_has_requests_within_limits(name: str) -> None:
    for workload, template in pod_templates(rendered(name)):
        for c in all_containers(template["spec"]):
            where = f"{workload['metadata']['name']}/{c['name']}"
            resources = c.get("resources", {})
            for resource in ("cpu", "memory"):
                assert resource in resources.get("limits", {}), f"{where}: no {resource} limit"
                assert resource in resources.get("requests", {}), f"{where}: no {resource} request"
                request, limit = resources["requests"][resource], resources["limits"][resource]
                assert quantity(request) <= quantity(limit), f"{where}: {resource} request above its limit"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_no_host_namespace_and_one_host_path_the_cgroup_tree(name: str) -> None:
    for workload, template in pod_templates(rendered(name)):
        spec = template["spec"]
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(field), f"{workload['metadata']['name']} uses {field}"
        host_paths = {v["name"]: v["hostPath"]["path"] for v in spec.get("volumes", []) if "hostPath" in v}
        if workload["metadata"]["name"] != SERVER:
            assert not host_paths, f"{workload['metadata']['name']} mounts host paths"
            continue
        assert host_paths == {"cgroup": "/sys/fs/cgroup"}
        for c in all_containers(spec):
            for mount in c.get("volumeMounts", []):
                assert mount.get("mountPropagation", "None") == "None", f"{c['name']}: mount propagation"
                if mount["name"] == "cgroup":
                    assert c["name"] == SERVER_CONTAINER
                    assert mount["mountPath"] == "/sys/fs/cgroup"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_only_the_server_container_is_privileged(name: str) -> None:
    objects = rendered(name)
    namespace = one(objects, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    account = one(objects, "ServiceAccount", SERVER)
    assert account["automountServiceAccountToken"] is False
    assert deployment(objects)["spec"]["template"]["spec"]["serviceAccountName"] == SERVER
    privileged = []
    for workload, template in pod_templates(objects):
        assert template["spec"].get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        for c in all_containers(template["spec"]):
            context = c.get("securityContext", {})
            assert context.get("readOnlyRootFilesystem") is True, f"{c['name']}: writable root file system"
            if context.get("privileged"):
                privileged.append((workload["metadata"]["name"], c["name"]))
                continue
            assert context.get("allowPrivilegeEscalation") is False, c["name"]
            assert context.get("capabilities", {}).get("drop") == ["ALL"], c["name"]
            assert not context.get("capabilities", {}).get("add"), c["name"]
    assert privileged == [(SERVER, SERVER_CONTAINER)]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_what_the_server_writes_is_on_volumes_of_the_pod(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = rendered(name)
    settings = manifest_settings(objects, monkeypatch)
    spec = deployment(objects)["spec"]["template"]["spec"]
    container = server_container(objects)
    assert settings.policies_dir is not None
    for path in (settings.state_dir, settings.data_dir, settings.policies_dir, Path("/tmp")):
        mount, volume = mount_for(container, spec, path)
        assert not mount.get("readOnly"), f"{path} is read-only"
        assert "emptyDir" in volume, f"{path} is not on a volume of the pod's own"
    # The init container copies the ConfigMap's policies into the server's policy directory.
    init = one([{"kind": "c", "metadata": {"name": c["name"]}, **c} for c in spec["initContainers"]], "c", "policies")
    source, source_volume = next((m, v) for m in init["volumeMounts"] for v in spec["volumes"]
                                 if v["name"] == m["name"] and "configMap" in v)
    assert one(objects, "ConfigMap", source_volume["configMap"]["name"])
    script = " ".join(init["command"])
    assert f"{source['mountPath']}/*.yaml" in script
    assert str(settings.policies_dir) in script
    target, _ = mount_for(init, spec, settings.policies_dir)
    assert target["name"] == mount_for(container, spec, settings.policies_dir)[0]["name"]


def test_the_policies_load_with_the_servers_own_loader(tmp_path: Path) -> None:
    config = one(rendered("base"), "ConfigMap", "sandbox-server-policies")
    assert config["data"]
    for file_name, text in config["data"].items():
        (tmp_path / file_name).write_text(text)
    policies = load_directory(tmp_path)
    assert "default" in policies.tenants


# ---------------------------------------------------------------------------------------- disruptions and autoscaling


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_disruption_budget_covers_the_servers_pods_only(name: str) -> None:
    objects = rendered(name)
    budget = one(objects, "PodDisruptionBudget", SERVER)
    selector = budget["spec"]["selector"]
    for workload, template in pod_templates(objects):
        is_server = workload["metadata"]["name"] == SERVER and workload["kind"] == "Deployment"
        assert selects(selector, template["metadata"]["labels"]) == is_server, workload["metadata"]["name"]
    autoscaler = one(objects, "HorizontalPodAutoscaler", SERVER)
    assert budget["spec"]["maxUnavailable"] < autoscaler["spec"]["minReplicas"], "a drain would take every server"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_autoscaler_scales_the_deployment_on_a_gauge_the_server_exports(
    name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = rendered(name)
    settings = manifest_settings(objects, monkeypatch)
    autoscaler = one(objects, "HorizontalPodAutoscaler", SERVER)
    target = autoscaler["spec"]["scaleTargetRef"]
    server = deployment(objects)
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == server["metadata"]["name"]
    assert "replicas" not in server["spec"], "the autoscaler owns the replica count"
    metrics = {m["pods"]["metric"]["name"]: m for m in autoscaler["spec"]["metrics"]}
    assert all(m["type"] == "Pods" for m in metrics.values())
    assert set(metrics) <= exported_gauges()
    # The queue is the signal; the busy slots lead it.
    assert set(metrics) == {"sandbox_queue_depth", "sandbox_active_sandboxes"}
    queued = quantity(metrics["sandbox_queue_depth"]["pods"]["target"]["averageValue"])
    assert 0 < queued <= settings.max_queued
    busy = quantity(metrics["sandbox_active_sandboxes"]["pods"]["target"]["averageValue"])
    assert 0 < busy < settings.max_running, "the target is a share of the admission slots"


def test_the_exported_gauges_are_read_from_the_real_exposition() -> None:
    gauges = exported_gauges()
    assert gauges
    assert all(name.startswith("sandbox_") or name == "target_info" for name in gauges)
    assert "sandbox_executions_total" not in gauges
    assert "sandbox_executions" not in gauges


def test_the_monitoring_files_match_the_service_the_alerts_and_the_autoscaler() -> None:
    objects = rendered("base")
    service = one(objects, "Service", SERVER)
    monitor = yaml.safe_load((KUBERNETES / "monitoring" / "servicemonitor.yaml").read_text())
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"} <= ports
    # Its job label is the Service's name: the one SandboxServerDown selects.
    alerts = yaml.safe_load(ALERTS.read_text())
    down = [r for g in alerts["groups"] for r in g["rules"] if r.get("alert") == "SandboxServerDown"]
    assert down
    assert f'job="{service["metadata"]["name"]}"' in down[0]["expr"]
    # The adapter's rule serves the metric the autoscaler asks for.
    names = [m["pods"]["metric"]["name"] for m in one(objects, "HorizontalPodAutoscaler", SERVER)["spec"]["metrics"]]
    rules = yaml.safe_load((KUBERNETES / "monitoring" / "prometheus-adapter-rules.yaml").read_text())["rules"]
    assert sorted(rule["name"]["as"] for rule in rules) == sorted(names)
    for rule in rules:
        metric = rule["name"]["as"]
        assert re.fullmatch(rule["name"]["matches"].strip("^$"), metric)
        assert rule["seriesQuery"].startswith(f"{metric}{{")
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    kustomized = {o["kind"] for name in KUSTOMIZATIONS for o in rendered(name)}
    assert "ServiceMonitor" not in kustomized


def test_the_data_stores_admit_the_servers_only() -> None:
    objects = rendered("overlays/in-cluster-data")
    (policy,) = of_kind(objects, "NetworkPolicy")
    server_labels = deployment(objects)["spec"]["template"]["metadata"]["labels"]
    assert not selects(policy["spec"]["podSelector"], server_labels)
    stores = [t for w, t in pod_templates(objects) if w["kind"] == "StatefulSet"]
    assert len(stores) == 2
    for template in stores:
        assert selects(policy["spec"]["podSelector"], template["metadata"]["labels"])
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}
    assert selects(peer["podSelector"], server_labels)
    for template in stores:
        assert not selects(peer["podSelector"], template["metadata"]["labels"])
    allowed = {p["port"] for p in rule["ports"]}
    store_ports = {p["port"] for s in of_kind(objects, "Service") if s["metadata"]["name"] != SERVER
                   for p in s["spec"]["ports"]}
    assert allowed == store_ports
