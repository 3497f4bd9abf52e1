"""The report opens in a real browser: headless Chromium decodes every embedded image and shows the verdicts."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--virtual-time-budget=5000",
]


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=60
    )


def test_report_renders_in_headless_chromium(run_folder, tmp_path):
    from edge_unlearn.deploy.report import render_report

    html_path = render_report(run_folder)
    proc = _chromium(tmp_path, "--dump-dom", html_path.resolve().as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    assert 'data-images-loaded="yes"' in body.group(0), body.group(0)  # every <img> has naturalWidth > 0
    assert 'data-image-count="3"' in body.group(0)
    assert re.findall(r'data-verdict="(pass|fail)"', dom) == ["pass", "fail"]
    assert ">PASS<" in dom and ">FAIL<" in dom

    png = tmp_path / "report.png"
    proc = _chromium(tmp_path, f"--screenshot={png}", "--window-size=1200,1600", html_path.resolve().as_uri())
    assert proc.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", proc.stderr[-2000:]
