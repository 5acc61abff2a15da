"""docs/asyncapi.json: generated from the code, valid AsyncAPI 3.0, and up to date."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from libs.common import asyncapi
from libs.common.events import CATALOGUE

DOCS = Path(__file__).resolve().parents[2] / "docs"
REGENERATE = "docs/ is out of date: run `mailroom docs asyncapi` (python -m libs.common.asyncapi)"


def test_docs_are_up_to_date() -> None:
    for name, text in asyncapi.render(asyncapi.build()).items():
        path = DOCS / name
        assert path.exists(), REGENERATE
        assert path.read_text(encoding="utf-8") == text, f"{name}: {REGENERATE}"


def test_the_document_is_valid_asyncapi_3() -> None:
    schema = json.loads((DOCS / "schemas" / "asyncapi-3.0.0.json").read_text())
    doc = asyncapi.build()
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
    assert not errors, [f"{list(e.path)}: {e.message[:200]}" for e in errors[:5]]
    broken = {**doc, "channels": {"x": {"address": 5}}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_event_is_a_channel_and_every_ref_resolves() -> None:
    doc = asyncapi.build()
    for cls in CATALOGUE.classes():
        cid = f"{cls.service}.{cls.aggregate}.{cls.event_name}"
        channel = doc["channels"][cid]
        assert channel["address"].startswith(f"mailroom.{{tenant}}.{cls.service}.")
        message = doc["components"]["messages"][cls.event_name]
        assert message["headers"]["allOf"][1]["properties"]["ce-type"]["const"] == cls.ce_type()
        payload = message["payload"]["$ref"].split("/")[-1]
        schema = doc["components"]["schemas"][payload]
        assert set(schema["properties"]) == {
            f.alias or name for name, f in cls.model_fields.items()
        }
    assert "registry.lease" in doc["channels"] and "authz.check" in doc["channels"]
    for ref in _refs(doc):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert node is not None, ref
