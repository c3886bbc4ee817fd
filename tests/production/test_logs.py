"""Structured logs: one JSON object per line with trace and span ids, tenant, session and execution id; the
code and output only when the tenant's policy asks for them (and output after secret redaction)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from production_helpers import server_with_policy

from sandbox_client import SandboxClient
from sandbox_server.logs import JsonFormatter, configure_logging
from sandbox_server.settings import load_settings

SECRET = "AKIAIOSFODNN7EXAMPLE"  # noqa: S105 (a well-known fake) an AWS access key id shape: the output guardrail redacts it


@contextmanager
def captured() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_the_call_line_carries_ids_but_never_code_or_output(tmp_path: Path) -> None:
    code = f"print('{SECRET}')  # marker-code-7"
    with server_with_policy(tmp_path, "") as srv, SandboxClient(srv.target) as sbx, captured() as logs:
        result = sbx.execute(code, session_id="log-sess")
    calls = [line for line in _lines(logs) if line.get("event") == "call"]
    (line,) = [c for c in calls if c.get("execution_id") == result.execution_id]
    assert line["trace_id"] == result.trace_id
    assert len(line["span_id"]) == 16
    assert (line["tenant"], line["session_id"], line["language"]) == ("default", "log-sess", "python")
    assert (line["code"], line["level"], line["status"]) == ("OK", "INFO", "OK")
    assert line["method"] == "/sandbox.v1.Sandbox/Execute"
    assert line["duration_ms"] > 0
    text = logs.getvalue()
    assert "marker-code-7" not in text
    assert SECRET not in text


def test_a_policy_may_ask_for_code_and_redacted_output(tmp_path: Path) -> None:
    code = f"print('{SECRET}', 'visible-out')  # marker-code-8"
    policy = "log_content: {code: true, output: true}"
    with server_with_policy(tmp_path, policy) as srv, SandboxClient(srv.target) as sbx, captured() as logs:
        result = sbx.execute(code)
    (line,) = [c for c in _lines(logs) if c.get("execution_id") == result.execution_id]
    assert "marker-code-8" in line["source"]
    assert line["code"] == "OK"  # the call's status code is not overwritten by the source
    assert "visible-out" in line["stdout"]
    assert SECRET not in line["stdout"]  # redacted before it could reach the log


def test_configure_logging_writes_json_lines(tmp_path: Path) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(load_settings(log_format="json", log_level="WARNING"), stream)
        logging.getLogger("sandbox_server.test").warning("hello %s", "world", extra={"tenant": "t1"})
        logging.getLogger("sandbox_server.test").info("not at this level")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["message"] == "hello world"
    assert line["tenant"] == "t1"
    assert line["level"] == "WARNING"
