"""The JSON Schema of a policy file, for editors (``# yaml-language-server: $schema=...``) and for review.

``python -m sandbox_server.policy.schema > policies/schema.json`` regenerates the committed copy; a test fails
when that copy drifts from the models.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from sandbox_server.policy.models import PolicyFile

__all__ = ["SCHEMA_DIALECT", "SCHEMA_TITLE", "json_schema", "main", "render"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_TITLE = "Sandbox server policy file"


def json_schema() -> dict[str, Any]:
    """``PolicyFile``'s JSON Schema (validation mode), with ``$schema`` and ``title`` first, and tenant names that
    do not match the name pattern refused."""
    schema = PolicyFile.model_json_schema(mode="validation")
    schema.pop("title", None)
    # pydantic lists valid tenant names as patternProperties; say also that no other name is allowed, so that
    # editors flag a bad tenant name as the loader does.
    schema["properties"]["tenants"]["additionalProperties"] = False
    return {"$schema": SCHEMA_DIALECT, "title": SCHEMA_TITLE, **schema}


def render() -> str:
    """The schema as the committed file holds it: 2-space indented JSON, keys in model order, final newline."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
