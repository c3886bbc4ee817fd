"""The shipped red-team report (docs/redteam/) stays true to the corpus and to the script that writes it.

Running the script takes minutes and a dockerd (`scripts/redteam_report.py`; tests/redteam/test_redteam.py runs
the same corpus on every backend): here, the committed results must cover every case of the shipped corpus on
every column, the summary must be exactly what the script renders from them, and nothing but a documented choice
may be left uncontained. A corpus change without a regenerated report fails here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from sandbox_client.redteam.corpus import shipped_corpus

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "docs" / "redteam"


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("redteam_report", ROOT / "scripts" / "redteam_report.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["redteam_report"] = module
    spec.loader.exec_module(module)
    return module


def _results() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((REPORT / "results.json").read_text())
    return doc


def test_every_column_ran_the_whole_shipped_corpus() -> None:
    script = _script()
    doc = _results()
    corpus = {case.id for case in shipped_corpus().cases}
    assert doc["corpus_cases"] == len(corpus)
    assert list(doc["columns"]) == [*script.BACKENDS, script.SHIPPED_POLICY]
    for name, column in doc["columns"].items():
        assert column["ran"], f"{name} did not run: {column.get('why_not')}"
        assert set(column["cases"]) == corpus, f"{name}: regenerate docs/redteam (scripts/redteam_report.py)"
        assert column["host_checks"]


def test_only_documented_choices_are_not_contained() -> None:
    script = _script()
    for name, column in _results()["columns"].items():
        for case_id, case in column["cases"].items():
            if case["verdict"] != "contained":
                assert (name, case_id) in script.DOCUMENTED, f"{case_id} on {name}: {case.get('problems')}"


def test_the_summary_is_what_the_script_renders() -> None:
    assert (REPORT / "README.md").read_text() == _script().summary(_results())
