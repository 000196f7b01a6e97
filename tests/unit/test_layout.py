"""Boundaries the architecture promises."""

from __future__ import annotations

import re
import subprocess

from harness.helpers import PYTHON, ROOT


def test_gateway_runtime_never_imports_torch() -> None:
    # the gateway's environment is `pip install .[gateway]`: no torch, no torchvision
    code = (
        "import sys; from gateway.main import create_app; import gateway.__main__; create_app(); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision', 'onnxruntime'}); "
        "assert not bad, bad"
    )
    result = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)  # noqa: PLW1510
    assert result.returncode == 0, result.stderr


def test_only_the_inference_module_imports_tritonclient() -> None:
    imports = re.compile(r"^\s*(from|import)\s+tritonclient\b", re.MULTILINE)
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "gateway").rglob("*.py") if imports.search(p.read_text()))
    assert users == ["gateway/inference/client.py"], users


def test_every_gateway_module_says_what_it_owns() -> None:
    import ast

    missing = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        if not doc or len(doc.splitlines()[0]) < 20:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"modules without a docstring whose first line says what they own: {missing}"


def test_ingest_knows_nothing_of_the_web_layer() -> None:
    web = re.compile(r"^\s*(from|import)\s+(fastapi|starlette|sse_starlette|uvicorn|gateway\.api)\b", re.MULTILINE)
    users = [str(p.relative_to(ROOT)) for p in (ROOT / "gateway" / "ingest").rglob("*.py") if web.search(p.read_text())]
    assert users == [], users


def test_no_module_parses_another_modules_json() -> None:
    # results and events travel as typed models (gateway/schema.py); JSON is only written
    # (SSE, capture records, EMF lines) and read by pydantic at the edges
    parse = re.compile(r"json\.loads?\(|\.get\(\s*[\"'](task|label|predictions|person_count|probability|boxes)[\"']")
    users = [str(p.relative_to(ROOT)) for p in (ROOT / "gateway").rglob("*.py") if parse.search(p.read_text())]
    assert users == [], users
