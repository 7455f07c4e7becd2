"""The Kubernetes manifests under deploy/kubernetes: each valid for Kubernetes (kubernetes-validate's schemas, strict,
at pinned versions), listed in the kustomization, and consistent with the proxy: the probes ask /ready and /health
on the port it serves, the pod runs as the image's user, and the ConfigMap's config loads with the proxy's own
loader, with the Secret's variables, and is safe to bind 0.0.0.0."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Final, cast

import kubernetes_validate  # pyright: ignore[reportMissingTypeStubs] # the package ships no type information
import pytest
import yaml

from mcpstore_proxy.config import load_settings
from mcpstore_proxy.errors import ConfigError
from mcpstore_proxy.serving import check_exposure
from tests.support import PROJECT_ROOT

MANIFESTS: Final = PROJECT_ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSIONS: Final = ("1.31.0", "1.37.0")
"""The oldest Kubernetes the manifests promise to fit, and the newest kubernetes-validate has schemas for."""
PROXY_PORT: Final = 8765
_VARIABLE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BUILT_IN_VARIABLES: Final = frozenset({"PYTHON", "CONFIG_DIR"})


def kustomization() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text()))


def resources() -> list[dict[str, Any]]:
    """Every resource the kustomization lists, in its order."""
    documents: list[dict[str, Any]] = []
    for name in kustomization()["resources"]:
        documents += [cast(dict[str, Any], doc) for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]
    return documents


def resource(kind: str) -> dict[str, Any]:
    (found,) = [document for document in resources() if document["kind"] == kind]
    return found


def pod_spec() -> dict[str, Any]:
    return cast(dict[str, Any], resource("Deployment")["spec"]["template"]["spec"])


def proxy_container() -> dict[str, Any]:
    (container,) = pod_spec()["containers"]
    return cast(dict[str, Any], container)


def config_text() -> str:
    return cast(str, resource("ConfigMap")["data"]["proxy.yaml"])


def secret_values() -> dict[str, str]:
    return cast(dict[str, str], resource("Secret")["stringData"])


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(config_text())
    return path


def real_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an operator puts in the Secret: long random values, one per variable."""
    for index, name in enumerate(secret_values()):
        monkeypatch.setenv(name, f"a-long-random-token-number-{index}-0123456789")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schema_in_strict_mode(version: str) -> None:
    kinds: list[str] = []
    for document in resources():
        kubernetes_validate.validate(document, version, strict=True)
        kinds.append(document["kind"])
    assert sorted(kinds) == ["ConfigMap", "Deployment", "NetworkPolicy", "Secret", "Service"]


def test_the_validator_catches_a_misspelt_field() -> None:
    deployment = resource("Deployment")
    misspelt = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_kustomization_lists_every_manifest_in_the_folder_and_only_those() -> None:
    listing = kustomization()
    assert listing["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert listing["kind"] == "Kustomization"
    assert set(listing) == {"apiVersion", "kind", "resources"}
    listed: list[str] = listing["resources"]
    assert len(set(listed)) == len(listed)
    present = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == present


def test_readiness_asks_ready_and_liveness_asks_health_on_the_port_the_proxy_serves() -> None:
    container = proxy_container()
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", PROXY_PORT)
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", str(PROXY_PORT)]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    service_port = resource("Service")["spec"]["ports"][0]
    assert (service_port["port"], service_port["targetPort"]) == (PROXY_PORT, "http")


def test_one_replica_holds_the_sessions_and_is_replaced_rather_than_rolled() -> None:
    spec = resource("Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_the_pod_runs_as_the_images_non_root_user_on_a_read_only_root() -> None:
    (image_user,) = re.findall(r"^USER (\d+):(\d+)$", (PROJECT_ROOT / "Dockerfile").read_text(), re.MULTILINE)
    pod = pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (str(pod["runAsUser"]), str(pod["runAsGroup"])) == image_user
    container = proxy_container()["securityContext"]
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}


def test_what_the_proxy_writes_lands_on_a_writable_volume_and_the_config_mount_is_read_only() -> None:
    mounts = {mount["mountPath"]: mount for mount in proxy_container()["volumeMounts"]}
    assert mounts["/config"]["readOnly"] is True
    writable = [Path(path) for path, mount in mounts.items() if not mount.get("readOnly", False)]
    raw = cast(dict[str, Any], yaml.safe_load(config_text()))
    for option in ("tool_pins_file", "runtime_services_file"):
        written = Path(raw[option])
        assert any(written.is_relative_to(folder) for folder in writable), f"{option} {written} is read-only"


def test_the_configmaps_config_loads_with_the_secrets_tokens_and_may_bind_every_interface(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_tokens(monkeypatch)
    settings = load_settings(write_config(tmp_path), serving=True, host="0.0.0.0", port=PROXY_PORT)
    check_exposure(settings)  # raises without `auth`: the pod binds 0.0.0.0
    assert settings.auth is not None
    assert settings.auth.is_on
    assert sorted(entry.principal for entry in settings.auth.tokens) == ["alice", "ops"]
    assert sorted(settings.mcp_servers) == ["counter", "notes"]
    assert all(server.command == sys.executable for server in settings.mcp_servers.values())
    assert settings.shutdown_grace_seconds < pod_spec()["terminationGracePeriodSeconds"]


def test_the_placeholder_tokens_are_refused_so_they_cannot_be_deployed_by_mistake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, placeholder in secret_values().items():
        monkeypatch.setenv(name, placeholder)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_settings(write_config(tmp_path), serving=True, host="0.0.0.0")


def test_every_variable_the_config_names_comes_from_the_secret_the_pod_reads() -> None:
    named = set(_VARIABLE.findall(config_text())) - _BUILT_IN_VARIABLES
    assert named == set(secret_values())
    secret_name = resource("Secret")["metadata"]["name"]
    assert proxy_container()["envFrom"] == [{"secretRef": {"name": secret_name}}]
    config_map = resource("ConfigMap")["metadata"]["name"]
    (volume,) = [volume for volume in pod_spec()["volumes"] if "configMap" in volume]
    assert volume["configMap"]["name"] == config_map
    environment = {variable["name"]: variable["value"] for variable in proxy_container()["env"]}
    assert environment["MCPSTORE_PROXY_CONFIG"] == "/config/proxy.yaml"


def test_without_auth_the_same_config_is_refused_on_every_interface(tmp_path: Path) -> None:
    raw = cast(dict[str, Any], yaml.safe_load(config_text()))
    del raw["auth"]
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(raw))
    settings = load_settings(path, serving=True, host="0.0.0.0")
    with pytest.raises(ConfigError, match="needs 'auth'"):
        check_exposure(settings)
