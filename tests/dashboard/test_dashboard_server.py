"""The dashboard server over real HTTP: incremental /api/metrics, static files from the package, the CLI."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from gspo_async.dashboard.server import STATIC_DIR, DashboardServer, serve_dashboard
from gspo_async.telemetry import MetricRegistry, read_metrics


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def api(server: DashboardServer, since: int) -> dict:
    status, ctype, body = get(f"{server.url}api/metrics?since={since}")
    assert status == 200 and ctype == "application/json"
    return json.loads(body)


def test_finished_run_is_served_whole(run_dir):
    with serve_dashboard(run_dir) as server:
        data = api(server, 0)
        assert data["records"] == read_metrics(run_dir)
        assert data["offset"] == data["size"] == (run_dir / "metrics.jsonl").stat().st_size
        assert data["more"] is False and data["reset"] is False
        assert abs(data["now"] - time.time()) < 60
        assert api(server, data["offset"])["records"] == []
        info = json.loads(get(f"{server.url}api/info")[2])
        assert info["exists"] is True and info["run"] == run_dir.name


def test_running_run_is_read_incrementally(tmp_path):
    reg = MetricRegistry("learner", tmp_path)
    with serve_dashboard(tmp_path) as server:
        assert api(server, 0)["records"] == []  # the learner has not written yet
        for step in range(3):
            reg.set("train/loss", 1.0 / (step + 1))
            reg.log(step, time=float(step))
        first = api(server, 0)
        assert [r["step"] for r in first["records"]] == [0, 1, 2]
        reg.log(3, time=3.0)
        with open(tmp_path / "metrics.jsonl", "a") as f:
            f.write('{"time": 4.0, "role": "learn')  # a record being written right now
        second = api(server, first["offset"])
        assert [r["step"] for r in second["records"]] == [3]
        with open(tmp_path / "metrics.jsonl", "a") as f:
            f.write('er", "step": 4}\n')
        assert [r["step"] for r in api(server, second["offset"])["records"]] == [4]
    reg.close()


def test_replaced_file_resets_the_reader(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"time": float(i), "role": "learner", "step": i}) + "\n" for i in range(5)))
    with serve_dashboard(tmp_path) as server:
        offset = api(server, 0)["offset"]
        path.write_text(json.dumps({"time": 9.0, "role": "learner", "step": 0}) + "\n")  # a new run
        data = api(server, offset)
        assert data["reset"] is True and [r["time"] for r in data["records"]] == [9.0]


def test_large_files_come_in_chunks(run_dir):
    with DashboardServer(run_dir, max_bytes=20_000) as server:
        records, offset, calls = [], 0, 0
        while True:
            data = api(server, offset)
            records += data["records"]
            offset = data["offset"]
            calls += 1
            if not data["more"]:
                break
        assert records == read_metrics(run_dir)
        assert calls > 5


def test_static_assets_come_from_the_package(run_dir):
    with serve_dashboard(run_dir) as server:
        status, ctype, body = get(server.url)
        assert status == 200 and ctype.startswith("text/html")
        for src in re.findall(rb'(?:src|href)="(/static/[^"]+)"', body):
            status, ctype, asset = get(server.url.rstrip("/") + src.decode())
            assert status == 200 and asset == (STATIC_DIR / src.decode()[len("/static/"):]).read_bytes()
        for bad in ("static/../server.py", "static/%2e%2e/server.py", "static/.hidden", "nothing", "static/"):
            assert get(server.url + bad)[0] == 404, bad
        assert get(f"{server.url}api/metrics?since=-1")[0] == 400
        assert get(f"{server.url}api/metrics?since=x")[0] == 400


def test_page_needs_no_network():
    for path in STATIC_DIR.iterdir():
        text = path.read_text().replace("http://www.w3.org/2000/svg", "")  # a namespace name, never fetched
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), f"{path.name} loads from the network"
        assert "@import" not in text


def test_missing_run_dir_and_busy_port(tmp_path):
    with pytest.raises(ValueError, match="run directory .* does not exist"):
        serve_dashboard(tmp_path / "nope")
    with serve_dashboard(tmp_path) as server:
        with pytest.raises(OSError, match="cannot serve the dashboard .* Pick another port"):
            serve_dashboard(tmp_path, port=server.port)


@pytest.mark.slow
def test_cli_serves_until_terminated(run_dir):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "gspo_async", "dashboard", str(run_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # blocks until the server printed its address (or the process died)
        match = re.search(r"at (http://\S+/)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        status, _, body = get(match.group(1) + "api/metrics?since=0")
        assert status == 200 and len(json.loads(body)["records"]) == len(read_metrics(run_dir))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_summary_endpoint_digests_the_whole_file(run_dir):
    from gspo_async.dashboard.summary import run_summary

    with DashboardServer(run_dir, max_bytes=5_000) as server:  # read in many chunks, digested incrementally
        status, _, body = get(f"{server.url}api/summary")
        assert status == 200
        got = json.loads(body)
    records = read_metrics(run_dir)
    expected = run_summary(records, time.time())
    assert got["records"] == len(records) and got["state"] == "ended"
    assert got["counts"] == expected["counts"] and got["drops"] == expected["drops"]
    assert got["events"] == expected["events"] and got["bottleneck"] == expected["bottleneck"]
    last = records[-1]
    assert got["drops"]["staleness/dropped"] == last["staleness/dropped"]
    assert got["counts"]["train/groups"] == last["train/groups"]


def test_main_waits_for_a_missing_run_dir_then_serves(tmp_path, capsys):
    import threading

    from gspo_async.dashboard.server import main

    run = tmp_path / "later"
    stop = threading.Event()
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(run, port=0, stop=stop, poll_s=0.05)))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        out = ""
        while "waiting for" not in out and time.monotonic() < deadline:
            out += capsys.readouterr().out
            time.sleep(0.05)  # polling the captured output; the assertion below re-checks
        assert f"waiting for {run} to appear" in out
        run.mkdir()
        while "dashboard of" not in out and time.monotonic() < deadline:
            out += capsys.readouterr().out
            time.sleep(0.05)
        url = re.search(r"at (http://\S+/)", out).group(1)
        assert get(url + "healthz")[0] == 200
    finally:
        stop.set()
        thread.join(timeout=10)
    assert codes == [0]


def test_main_names_a_free_port_when_the_port_is_taken(tmp_path, capsys):
    from gspo_async.dashboard.server import main

    with serve_dashboard(tmp_path) as server:
        assert main(tmp_path, port=server.port) == 2
    out = capsys.readouterr().out
    match = re.search(rf"port {server.port} on 127.0.0.1 is in use .*try --port (\d+)", out)
    assert match, out
    assert int(match.group(1)) != server.port


@pytest.mark.parametrize("command", ["dashboard", "report"])
def test_help_describes_every_option_with_its_default(command, capsys):
    from gspo_async.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "run directory" in text
    if command == "report":
        assert "default: RUN_DIR/report" in text
        return
    assert "default: 8265" in text and "default: 127.0.0.1" in text and "run directory" in text
