"""NO_COLOR and FORCE_COLOR are honoured; JSON never carries ANSI codes, whatever the environment says."""

from cli_run import run_cli


def test_force_color_colours_the_table(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert "\x1b[" in run_cli("explain", "svc-local", "--demo").stdout


def test_no_color_wins(monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in run_cli("explain", "svc-local", "--demo").stdout


def test_no_color_flag(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert "\x1b[" not in run_cli("explain", "svc-local", "--demo", "--no-color").stdout


def test_json_is_never_coloured(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    for args in (["explain", "svc-local"], ["check"], ["nodes"], ["trace", "--dst", "10.200.1.73:9000"]):
        out = run_cli(*args, "--demo", "-o", "json").stdout
        assert out and "\x1b[" not in out, args
