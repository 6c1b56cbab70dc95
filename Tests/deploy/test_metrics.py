"""(5) Prometheus metrics (`--metrics-address`) of a real target and controller, read
the way Prometheus reads them: over HTTP, parsed by prometheus_client's text parser.

The target runs with a file store and nvmet simulated in a directory, on a unix
socket with --insecure-plaintext (TLS has its own tests); CSI calls go through
`nvme-csi ctl` to the controller's socket.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import deploylib

START_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> tuple[str, dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict, family: str, sample: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample}{labels} in {family}")


def _wait_http(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[1]} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            _scrape(port)
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    raise AssertionError(f"{proc.args[1]} served no metrics within {START_TIMEOUT}s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def running():
    binary = deploylib.nvme_csi_bin()
    work = Path(tempfile.mkdtemp(prefix="nvm-", dir="/tmp"))
    (work / "store").mkdir()
    (work / "configfs").mkdir()
    procs: list[subprocess.Popen] = []
    ports = {"target": _free_port(), "controller": _free_port()}
    socket_path = work / "csi.sock"
    (work / "targets.json").write_text(
        '{"targets": [{"name": "store-m", "address": "unix://%s"}]}' % (work / "target.sock"))
    commands = {
        "target": ["target", "--listen", f"unix://{work}/target.sock", "--store", f"file:{work}/store",
                   "--configfs", f"{work}/configfs", "--portal", "127.0.0.1:4420", "--insecure-plaintext"],
        "controller": ["controller", "--endpoint", f"unix://{socket_path}", "--targets", f"{work}/targets.json",
                       "--insecure-plaintext"],
    }
    try:
        for role, args in commands.items():
            log = work / f"{role}.log"
            proc = subprocess.Popen([binary, *args, "--metrics-address", f"127.0.0.1:{ports[role]}"],
                                    stdout=log.open("w"), stderr=subprocess.STDOUT)
            procs.append(proc)
            _wait_http(ports[role], proc, log)

        def ctl(*args: str, ok: bool = True) -> str:
            r = subprocess.run([binary, "ctl", *args, "--endpoint", f"unix://{socket_path}"],
                               capture_output=True, text=True, timeout=60)
            assert (r.returncode == 0) == ok, r.stdout + r.stderr
            return r.stdout

        yield ports, ctl
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def test_rpcs_are_counted_by_code_and_timed(running):
    ports, ctl = running
    ctl("create-volume", "pvc-metrics", "--size", "16Mi")
    ctl("delete-volume", "v1.store-m.00000000-0000-4000-8000-000000000000")  # idempotent: OK
    ctl("expand", "not-a-volume-id", "--size", "32Mi", ok=False)
    _, controller = _scrape(ports["controller"])
    requests = "nvmecsi_rpc_requests"
    assert _value(controller, requests, "nvmecsi_rpc_requests_total", method="CreateVolume", code="ok") == 1
    failed = [s for s in controller[requests].samples
              if s.labels["method"] == "ControllerExpandVolume" and s.labels["code"] != "ok"]
    assert len(failed) == 1 and failed[0].value == 1, failed
    assert controller["nvmecsi_rpc_duration_seconds"].type == "histogram"
    count = _value(controller, "nvmecsi_rpc_duration_seconds", "nvmecsi_rpc_duration_seconds_count",
                   method="CreateVolume")
    assert count == 1
    # The target served the controller's calls and counted them too.
    _, target = _scrape(ports["target"])
    assert _value(target, requests, "nvmecsi_rpc_requests_total", method="CreateVolume", code="ok") == 1


def test_target_reports_its_contents_and_capacity(running):
    ports, ctl = running
    out = ctl("create-volume", "pvc-gauges", "--size", "8Mi")
    volume = next(line.split()[1] for line in out.splitlines() if line.startswith("volume "))
    ctl("create-snapshot", "snap-gauges", "--volume", volume)
    _, target = _scrape(ports["target"])
    assert _value(target, "nvmecsi_target_volumes", "nvmecsi_target_volumes") >= 1
    assert _value(target, "nvmecsi_target_snapshots", "nvmecsi_target_snapshots") == 1
    provisioned = _value(target, "nvmecsi_target_provisioned_bytes", "nvmecsi_target_provisioned_bytes")
    assert provisioned >= 8 << 20
    assert _value(target, "nvmecsi_target_capacity_bytes", "nvmecsi_target_capacity_bytes") > 0
    assert _value(target, "nvmecsi_target_overcommit_ratio", "nvmecsi_target_overcommit_ratio") == 1
    ctl("delete-volume", volume)
    _, after = _scrape(ports["target"])
    assert _value(after, "nvmecsi_target_provisioned_bytes", "nvmecsi_target_provisioned_bytes") == \
        provisioned - (8 << 20)


def test_controller_reports_target_reachability_and_process(running):
    ports, _ = running
    text, controller = _scrape(ports["controller"])
    assert _value(controller, "nvmecsi_controller_target_up", "nvmecsi_controller_target_up", target="store-m") == 1
    assert _value(controller, "process_resident_memory_bytes", "process_resident_memory_bytes") > 1 << 20
    assert _value(controller, "process_open_fds", "process_open_fds") > 0
    assert "# HELP nvmecsi_rpc_requests_total" in text


def test_anything_but_get_metrics_is_not_found(running):
    ports, _ = running
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{ports['target']}/", timeout=10)
    assert e.value.code == 404
