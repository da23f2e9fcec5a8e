"""The Kubernetes recipe (deploy/docker, deploy/helm, deploy/k8s) against the project.

Docker and Kubernetes cannot run here: no image is built, no chart is installed. What these
tests hold is the recipe's agreement with what the rest of the suite runs: the extras the
image installs, the code location it serves, the run queue's limits, the settings it passes
and the route the API's probes ask for.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from litestar import Litestar
from litestar.routes import HTTPRoute

from mirror_api.app import create_app
from mirror_assets.config import Settings
from mirror_assets.defs import jobs, lake
from mirror_assets.names import (
    BACKFILL_JOB,
    INGEST_JOB,
    LAKE_MAINTENANCE_JOB,
    RECLUSTER_JOB,
    WRITER_TAG,
)

PROJECT = Path(__file__).resolve().parents[2]
DEPLOY = PROJECT / "deploy"
PYPROJECT: dict[str, Any] = tomllib.loads((PROJECT / "pyproject.toml").read_text())
# The code location as the project declares it ([tool.dagster]).
MODULE: str = PYPROJECT["tool"]["dagster"]["module_name"]
LOCATION: str = PYPROJECT["tool"]["dagster"]["code_location_name"]
# Read by libraries rather than by the project's own source: AWS_* (S3 access), Dagster's
# own, and libpq's password for the lake's catalog.
STANDARD_PREFIXES = ("AWS_",)
STANDARD_NAMES = {"DAGSTER_HOME", "DAGSTER_POSTGRES_URL", "PGPASSWORD"}

Limits = set[tuple[str, str, int]]


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _helm() -> dict[str, Any]:
    values: dict[str, Any] = _yaml(DEPLOY / "helm" / "values.yaml")
    return values


def _queued_run_coordinator() -> dict[str, Any]:
    coordinator = _helm()["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    return dict(coordinator["config"]["queuedRunCoordinator"])


def _user_deployment() -> dict[str, Any]:
    [deployment] = _helm()["dagster-user-deployments"]["deployments"]
    return dict(deployment)


def _secret() -> dict[str, Any]:
    secret: dict[str, Any] = _yaml(DEPLOY / "k8s" / "secret.example.yaml")
    return secret


def _api() -> tuple[dict[str, Any], dict[str, Any]]:
    """The API's Deployment and Service."""
    documents = list(yaml.safe_load_all((DEPLOY / "k8s" / "api.yaml").read_text()))
    [deployment] = [d for d in documents if d["kind"] == "Deployment"]
    [service] = [d for d in documents if d["kind"] == "Service"]
    return deployment, service


def _api_container() -> dict[str, Any]:
    [container] = _api()[0]["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _api_env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in _api_container()["env"]}


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, one a line: comments dropped, continuations joined."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    kept = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return [line.strip() for line in kept.replace("\\\n", " ").splitlines() if line.strip()]


def _pip_install() -> str:
    [command] = [
        part
        for line in _dockerfile()
        if line.startswith("RUN ")
        for part in line.removeprefix("RUN ").split("&&")
        if "pip install" in part
    ]
    return command


def _code_server(argv: Iterable[str]) -> tuple[str, str]:
    """The module and location name a `dagster code-server start` command line serves."""
    argv = list(argv)
    assert [Path(argv[0]).name, *argv[1:3]] == ["dagster", "code-server", "start"], argv
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("-m", "--module-name")
    options.add_argument("--location-name")
    known, _ = options.parse_known_args(argv[3:])
    return known.module_name, known.location_name


def _limits(entries: Iterable[Mapping[str, Any]]) -> Limits:
    return {(entry["key"], entry["value"], entry["limit"]) for entry in entries}


def _writer_tags() -> set[str]:
    """The `mirror/writer` values of the project's jobs, the lake's housekeeping included."""
    values: set[str] = set()
    for module in (jobs, lake):
        for value in vars(module).values():
            tags = getattr(value, "tags", None)
            if isinstance(tags, Mapping) and WRITER_TAG in tags:
                values.add(str(tags[WRITER_TAG]))
    return values


def test_the_image_installs_the_lake_cluster_and_k8s_extras() -> None:
    pip = _pip_install()
    [extras] = re.findall(r"\.\[([^\]]*)\]", pip)
    assert extras.split(",") == ["lake", "cluster", "k8s"]
    declared = PYPROJECT["project"]["optional-dependencies"]
    assert {"lake", "cluster", "k8s"} <= declared.keys()
    # The chart's instance keeps Dagster's storage in Postgres, and its run launcher is
    # dagster-k8s's: the image that serves the code and runs the runs loads both.
    assert any(dep.startswith("dagster-postgres") for dep in declared["cluster"])
    assert _helm()["runLauncher"]["type"] == "K8sRunLauncher"
    assert any(dep.startswith("dagster-k8s") for dep in declared["k8s"])


def test_the_image_the_chart_and_systemd_serve_the_same_code_location() -> None:
    [cmd] = [line for line in _dockerfile() if line.startswith("CMD ")]
    image = _code_server(json.loads(cmd.removeprefix("CMD ")))

    deployment = _user_deployment()
    # The chart prefers dagsterApiGrpcArgs when both are set, and names the location after
    # the deployment in the workspace it writes.
    assert "dagsterApiGrpcArgs" not in deployment
    assert deployment["name"] == LOCATION
    prefix = ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", str(deployment["port"])]
    chart = _code_server([*prefix, *deployment["codeServerArgs"]])

    unit = (DEPLOY / "systemd" / "atproto-mirror-code.service").read_text()
    [exec_start] = re.findall(r"^ExecStart=(.+)$", unit, flags=re.MULTILINE)
    systemd = _code_server(shlex.split(exec_start))

    assert image == chart == systemd == (MODULE, LOCATION)


def test_the_run_queue_matches_the_cluster_instance() -> None:
    runs = _yaml(DEPLOY / "cluster" / "dagster.yaml")["concurrency"]["runs"]
    queued = _queued_run_coordinator()
    chart = _limits(queued["tagConcurrencyLimits"])
    assert chart == _limits(runs["tag_concurrency_limits"])
    assert queued["maxConcurrentRuns"] == runs["max_concurrent_runs"]

    writers = _writer_tags() - {RECLUSTER_JOB}  # the file's reclustering has no lake twin
    assert {INGEST_JOB, BACKFILL_JOB, LAKE_MAINTENANCE_JOB} <= writers
    assert writers <= {value for key, value, _ in chart if key == WRITER_TAG}


def test_every_variable_the_recipe_sets_is_one_the_mirror_reads() -> None:
    source = "\n".join(
        path.read_text()
        for package in ("mirror_assets", "mirror_api")
        for path in sorted((PROJECT / package).rglob("*.py"))
    )
    names = set(_secret()["stringData"]) | set(_api_env())
    unread = {
        name
        for name in names
        if not name.startswith(STANDARD_PREFIXES)
        and name not in STANDARD_NAMES
        and f'"{name}"' not in source
    }
    assert not unread, f"set by the recipe, read by nothing: {sorted(unread)}"

    # Every pod that needs the settings names the Secret the example makes.
    secret = _secret()["metadata"]["name"]
    launcher = _helm()["runLauncher"]["config"]["k8sRunLauncher"]
    for refs in (_user_deployment()["envSecrets"], launcher["envSecrets"]):
        assert {ref["name"] for ref in refs} == {secret}
    assert [ref["secretRef"]["name"] for ref in _api_container()["envFrom"]] == [secret]


def test_the_example_settings_make_a_lake_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**_secret()["stringData"], **_api_env()}.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(env_file=None)
    assert settings.lake is not None
    assert len(settings.api_cursor_key) >= 32
    # BACKFILL_RUNS chooses the backfill runs in flight; the run queue must let them run.
    limits = _limits(_queued_run_coordinator()["tagConcurrencyLimits"])
    [cap] = [limit for key, value, limit in limits if (key, value) == (WRITER_TAG, BACKFILL_JOB)]
    assert settings.backfill.runs <= cap


def test_the_api_runs_mirror_api_and_probes_a_route_it_serves(tmp_path: Path) -> None:
    deployment, service = _api()
    container = _api_container()
    assert container["command"] == ["mirror", "api"]
    assert "mirror" in PYPROJECT["project"]["scripts"]
    image = _user_deployment()["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"

    env = _api_env()
    assert env["API_HOST"] == "0.0.0.0"
    port = int(env["API_PORT"])
    # The API as `mirror api` builds it, here over a file store in tmp_path.
    app: Litestar = create_app(Settings(db_path=tmp_path / "mirror.duckdb"))
    gets = {r.path for r in app.routes if isinstance(r, HTTPRoute) and "GET" in r.methods}
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe["httpGet"]["path"] in gets
        assert probe["httpGet"]["port"] == port

    [service_port] = service["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (80, port)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
