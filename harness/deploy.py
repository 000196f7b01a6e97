"""Deploy files read as Docker would read them, for the tests that check them without Docker:
docker-compose.yml with compose's variable interpolation, Dockerfile instructions, lock pins."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from gateway.config import Settings
from harness.helpers import ROOT

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
TEST_API_KEY = "test-gateway-api-key-0123456789"  # compose requires GATEWAY_API_KEY; the tests give it this
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def settings_paths(model: type[BaseModel] = Settings, prefix: str = "") -> set[str]:
    """Every setting's dotted path, nested sections included (what deploy files may set)."""
    out = set()
    for name, info in model.model_fields.items():
        out.add(f"{prefix}{name}")
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            out |= settings_paths(info.annotation, f"{prefix}{name}.")
    return out


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``."""

    def value(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        have = env.get(name)
        if op in (":-", "-"):
            return have if have or (op == "-" and have is not None) else arg
        if op in (":?", "?"):
            if not have:
                raise ValueError(f"{name}: {arg}")
            return have
        return have or ""

    return _VAR.sub(value, text)


def variables(text: str) -> set[str]:
    return {m.group(1) for m in _VAR.finditer(text)}


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml, interpolated with ``env`` (and the required admin and API keys)."""
    env = {"TRITON_ADMIN_KEY": "test-admin-key", "GATEWAY_API_KEY": TEST_API_KEY, **(env or {})}
    doc: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), env))
    return doc


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, val = line.partition("=")
            out[key.strip()] = val.strip()
    return out


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def seconds(duration: str) -> float:
    """A compose duration (``30s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, out, current = path.read_text().splitlines(), [], ""
    for line in lines:
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def exec_form(args: str) -> list[str]:
    """A JSON-array instruction argument (ENTRYPOINT, CMD, HEALTHCHECK ... CMD)."""
    parsed: list[str] = json.loads(args[args.index("[") :])
    return parsed


def lock_pins(lock: Path) -> dict[str, str]:
    """name -> version pinned by a lock file (names normalized as pip does)."""
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s\\]+)", lock.read_text(), re.MULTILINE)
    return {re.sub(r"[-_.]+", "-", n).lower(): v for n, v in pins}


# --- Terraform ------------------------------------------------------------------------------------

INFRA = ROOT / "infra"


def _unquote(value: Any) -> Any:
    """python-hcl2 keeps HCL's quotes on strings and labels: drop them, recursively."""
    if isinstance(value, str):
        return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items() if not str(k).startswith("__")}
    return value


def terraform(folder: Path = INFRA) -> dict[str, dict[str, dict[str, Any]]]:
    """Every block of the ``*.tf`` files of ``folder`` (not below it), by kind, type and name:
    ``{"resource": {"aws_lb": {"main": {...}}}, "variable": {"name": {...}}, "module": {...}}``."""
    import hcl2

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.tf")):
        with path.open() as f:
            doc = hcl2.load(f)
        for kind, blocks in doc.items():
            if kind.startswith("__"):
                continue
            for raw in blocks if isinstance(blocks, list) else [blocks]:
                block = _unquote(raw)
                if kind in ("resource", "data"):
                    for rtype, named in block.items():
                        for name, attrs in named.items():
                            out.setdefault(kind, {}).setdefault(rtype, {})[name] = attrs
                else:  # variable, output, module, locals, terraform, provider
                    for name, attrs in block.items():
                        out.setdefault(kind, {})[name] = attrs
    return out
