"""Requests for every operation of an OpenAPI document, with chosen values for ids.

Used by the cross-tenant probe: each operation of the running app's ``/openapi.json`` (so new
endpoints are covered without touching the test) becomes one request whose path, query and
header parameters and JSON body are filled from its schema. Parameters and body fields named
like an id take the value given for that name (``ids``; ``query:<name>`` for query parameters,
``string:<name>`` for other strings, ``path`` for unknown path parameters), other required
values are minimal valid samples, optional ones are left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.common.ids import new_id

SKIP_PATHS = frozenset({"/metrics"})


@dataclass
class ProbeRequest:
    method: str
    template: str
    url: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    json_body: Any = None
    content: bytes | None = None

    @property
    def label(self) -> str:
        return f"{self.method} {self.template}"

    def text(self) -> str:
        """Everything the request sends, as text (what a response may echo back)."""
        body = json.dumps(self.json_body) if self.json_body is not None else ""
        raw = self.content.decode() if self.content else ""
        return " ".join([self.url, json.dumps(self.params), json.dumps(self.headers), body, raw])


class Sampler:
    def __init__(self, spec: dict[str, Any], ids: dict[str, str], csv: bytes) -> None:
        self.spec = spec
        self.ids = ids
        self.csv = csv

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = self.spec["components"]["schemas"][name]
        return schema

    def id_for(self, name: str) -> str | None:
        return self.ids.get(name)

    def sample(self, schema: dict[str, Any], name: str = "", depth: int = 0) -> Any:
        schema = self.resolve(schema)
        options = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
        if options:
            usable = [o for o in options if self.resolve(o).get("type") != "null"]
            return self.sample(usable[0] if usable else options[0], name, depth)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return schema["enum"][0]
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            if depth > 6:
                return {}
            out: dict[str, Any] = {}
            required = set(schema.get("required", []))
            for prop, sub in schema.get("properties", {}).items():
                if prop in required or self.id_for(prop) is not None:
                    out[prop] = self.sample(sub, prop, depth + 1)
            return out
        if kind == "array":
            n = schema.get("minItems", 0) or (1 if self.id_for(name.rstrip("s") + "_id") else 0)
            return [self.sample(schema.get("items", {}), name.rstrip("s"), depth + 1)] * n
        if kind == "string":
            return self.string(schema, name)
        if kind == "integer":
            return max(int(schema.get("minimum", 1)), int(schema.get("exclusiveMinimum", 0)) + 1)
        if kind == "number":
            return float(schema.get("minimum", 1))
        if kind == "boolean":
            return False
        return self.id_for(name) or "probe"

    def string(self, schema: dict[str, Any], name: str) -> str:
        value = self.id_for(name) or self.ids.get(f"string:{name}")
        if value is not None:
            return value
        fmt = schema.get("format")
        if fmt == "date-time":
            return (datetime.now(UTC) + timedelta(days=1)).isoformat()
        if fmt == "email" or "email" in name or "address" in name:
            return f"probe-{new_id()[-6:]}@tenant-b.example"
        if "host" in name:
            return "127.0.0.1"
        return "probe".ljust(schema.get("minLength", 1), "x")

    def request(
        self, method: str, template: str, op: dict[str, Any], body: Any = None
    ) -> ProbeRequest:
        """The request for an operation (``body``: this JSON body instead of a sample)."""
        url = template
        params: dict[str, str] = {}
        headers: dict[str, str] = {}
        for p in op.get("parameters", []):
            name, where, schema = p["name"], p["in"], p.get("schema", {})
            if where == "path":  # an unknown path parameter gets the "path" value
                url = url.replace("{" + name + "}", self.id_for(name) or self.ids["path"])
            elif where == "query":
                query = self.ids.get(f"query:{name}")
                if query is None and p.get("required"):
                    query = str(self.sample(schema, name))
                if query is not None:
                    params[name] = query
            elif where == "header" and name.lower() in ("idempotency-key", "prefer"):
                lowered = name.lower()
                headers[name] = new_id() if lowered == "idempotency-key" else "respond-async"
        req = ProbeRequest(method, template, url, params, headers)
        content = op.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            schema = content["application/json"].get("schema", {})
            req.json_body = body if body is not None else self.sample(schema)
        elif "text/csv" in content:
            req.content, req.headers["Content-Type"] = self.csv, "text/csv"
        return req


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path template, operation) for every operation of the document."""
    return [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        if path not in SKIP_PATHS
        for method, op in ops.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]
