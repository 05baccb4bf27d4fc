"""`svcdoctor report` (issue #12) opened in real headless Chromium from file://, the network off: no console
errors, every finding of `check` in the page, every service's picture rendered; a big report's packed services
unfold when opened. Skipped only where chromium is not installed (CI installs it: scripts/install-system-deps.sh).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile

import pytest

from cli_run import run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-deps.sh)")

# headless, and nothing that would reach for the network (without these it hangs on a closed network)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000"]


def chromium(url: str, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                              capture_output=True, text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    # page messages are logged as CONSOLE(line) "message"; uncaught errors and CSP refusals among them
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Refused to" in line]


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "demo.html"
    r = run_cli("report", "--demo", "--out", str(path))
    assert r.exit_code == 0, r.stderr
    return path


def test_the_demo_report_renders_offline_with_every_finding_and_picture(demo_report):
    run = chromium(demo_report.as_uri(), "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert not console_errors(run.stderr)
    dom = run.stdout
    findings = run_cli("check", "--demo", "-o", "json").json()["findings"]
    assert findings
    for f in findings:
        assert html.escape(f["message"], quote=False) in dom, f["message"]
        assert f'id="f-{f["id"]}"' in dom
    services = re.findall(r'<details class="svc" id="s-([^"]+)"', dom)
    assert len(services) == 6
    for service in services:
        section = dom.split(f'id="s-{service}"', 1)[1].split('<details class="svc"', 1)[0]
        assert "<svg" in section and "<rect" in section, service  # its picture
    assert "http://" not in dom.replace("http://www.w3.org/2000/svg", "") and "https://" not in dom


def test_the_screenshot_shows_the_pictures(demo_report, tmp_path):
    png = tmp_path / "shot.png"
    run = chromium(demo_report.as_uri(), f"--screenshot={png}", "--window-size=1400,2400")
    assert run.returncode == 0 and png.is_file()
    assert not console_errors(run.stderr)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a page of boxes and text, not a blank one


def test_a_packed_service_unfolds_when_linked(tmp_path, monkeypatch):
    import svcdoctor.render.report_html as report_html

    monkeypatch.setattr(report_html, "PACK_ABOVE", 0)  # pack the demo's quiet services as a big cluster's are
    path = tmp_path / "packed.html"
    assert run_cli("report", "--demo", "--out", str(path)).exit_code == 0
    page = path.read_text()
    assert 'class="packed"' in page and 'type="application/gzip"' in page
    anchor = re.findall(r'<details class="svc" id="(s-[^"]+)"[^>]*><summary>(?:(?!</details>).)*class="packed"',
                        page)[0]
    run = chromium(path.as_uri() + "#" + anchor, "--dump-dom")
    assert not console_errors(run.stderr)
    section = run.stdout.split(f'id="{anchor}"', 1)[1].split('<details class="svc"', 1)[0]
    assert "<svg" in section and "(unpacking…)" not in section
