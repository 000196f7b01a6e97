"""Boundaries the architecture promises."""

from __future__ import annotations

import subprocess

from tests.helpers import PYTHON, ROOT


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
    users = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "gateway").rglob("*.py") if "tritonclient" in p.read_text()
    )
    assert users == ["gateway/inference.py"], users
