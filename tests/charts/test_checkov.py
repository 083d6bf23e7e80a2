"""checkov over the manifests of every values profile, rendered by Helm's engine: zero failed
checks, and every skipped check carries its reason (charts/atalaya/.checkov.yaml for
chart-wide skips, a `checkov.io/skip` annotation for a resource's own).

checkov pins older versions of packages the project locks, so it lives in its own venv
(`make test` builds .venv/tools/checkov from requirements/checkov.txt and passes its path in
ATALAYA_CHECKOV). Run alone without it, the test is skipped with a message saying so."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.helm import CHART, RENDERINGS, ROOT, rendered

CONFIG = CHART / ".checkov.yaml"


def checkov_binary() -> str:
    configured = os.environ.get("ATALAYA_CHECKOV")
    if configured:
        assert Path(configured).is_file(), f"ATALAYA_CHECKOV={configured} does not exist"
        return configured
    local = ROOT / ".venv" / "tools" / "checkov" / "bin" / "checkov"
    if local.is_file():
        return str(local)
    found = shutil.which("checkov")
    if found is None:
        pytest.skip("checkov is not installed: `make test` installs it (.venv/tools/checkov)")
    return found


def skipped_with_reasons() -> dict[str, str]:
    """check id -> reason, from the comment lines above each id in .checkov.yaml."""
    reasons: dict[str, str] = {}
    comment: list[str] = []
    for line in CONFIG.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("# "))
        elif match := re.fullmatch(r"- (CKV2?_[A-Z0-9_]+)", stripped):
            reasons[match.group(1)] = " ".join(comment)
            comment = []
        else:
            comment = []
    return reasons


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    binary = checkov_binary()
    folder = tmp_path_factory.mktemp("rendered")
    for profile in RENDERINGS:
        (folder / f"{profile}.yaml").write_text(yaml.safe_dump_all(rendered(profile)))
    env = {
        **os.environ,
        "BC_SKIP_MAPPING": "TRUE",  # no download of check metadata
        "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
        "LOG_LEVEL": "ERROR",
    }
    command = [binary, "--config-file", str(CONFIG), "--skip-download", "--output", "json"]
    result = subprocess.run(
        [*command, "--directory", str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert result.stdout.strip(), result.stderr[-2000:]
    parsed = json.loads(result.stdout)
    reports = parsed if isinstance(parsed, list) else [parsed]
    (kubernetes,) = [r for r in reports if r["check_type"] == "kubernetes"]
    return dict(kubernetes)


def test_checkov_finds_nothing(report: dict[str, Any]) -> None:
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for c in report["results"]["failed_checks"]
    ]
    assert failed == []
    assert summary["failed"] == 0
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 1000
    print(f"checkov: {summary['passed']} passed, 0 failed, {summary['skipped']} skipped")


def test_every_skip_has_a_reason(report: dict[str, Any]) -> None:
    reasons = skipped_with_reasons()
    assert set(reasons) == {"CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_43"}
    assert all(len(reason) > 40 for reason in reasons.values())
    for check in report["results"]["skipped_checks"]:
        assert check["resource"].startswith("Pod."), check["resource"]  # the helm test pod
        assert check["check_id"] in {"CKV_K8S_8", "CKV_K8S_9"}
        assert len(check["check_result"]["suppress_comment"]) > 20
