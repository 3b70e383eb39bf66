"""A saved capture renders again, as text and as a picture; doctor tells the truth."""
import json

from conftest import WORKLOAD, run_ramwatchd


def test_report_renders_what_the_capture_printed(tmp_path):
    saved, png = tmp_path / "c.json", tmp_path / "c.png"
    live = run_ramwatchd(["run", "--quiet", "--json", str(saved), "--", *WORKLOAD, "anon:64M", "sleep:1"])
    assert live.returncode == 0, live.stderr
    again = run_ramwatchd(["report", str(saved), "--png", str(png)])
    assert again.returncode == 0, again.stderr
    summary = again.stdout[:again.stdout.index("timeline drawn")]
    assert summary in live.stdout and "== ramwatchd summary" in summary
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    timeline = run_ramwatchd(["report", str(saved), "--timeline"]).stdout
    grew = [e for e in json.loads(saved.read_text())["timeline"] if e["kind"] == "grow"]
    assert grew and f"{grew[0]['t']:8.2f}s" in timeline


def test_doctor_passes_where_captures_run():
    done = run_ramwatchd(["doctor"])
    assert done.returncode == 0, done.stdout
    lines = [l for l in done.stdout.splitlines() if l[:4] in ("OK  ", "FAIL", "WARN")]
    assert not [l for l in lines if l.startswith("FAIL")]
    assert any("tracepoint kmem:rss_stat" in l for l in lines)
    assert "OK    ramwatchd's BPF programs load and attach" in done.stdout


def test_doctor_fails_and_says_how_to_fix_without_privileges():
    import subprocess
    from conftest import RAMWATCHD
    done = subprocess.run(["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--"]
                          + RAMWATCHD + ["doctor"], capture_output=True, text=True)
    assert done.returncode == 1
    assert "FAIL  not enough privilege" in done.stdout and "fix: run as root" in done.stdout
