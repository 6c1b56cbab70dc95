#!/usr/bin/env python3
"""make bench-vm: issue 13's `make bench` items 2, 3 and 4, measured inside the VM.

Two modes:

  measure  (inside the VM, as root; bench/vm/guest.sh starts it) sets up a file store
           on XFS on a loop device, nvmet through the real configfs, `nvme-csi target`
           and `nvme-csi all-in-one`, and measures, in one run, with the rounds of the
           things compared interleaved:
             attach    NodeStage+NodePublish of a formatted ext4 volume (Python grpcio on
                       the all-in-one socket) against exec `nvme connect` + poll + mount;
             data      fio through the device nvme-csi staged (block volume) against a
                       namespace connected by hand with nvme-cli's defaults, job by job
                       (two volumes, their roles swapped every round);
             footprint node plugin RSS idle and with N volumes staged, start to ready
                       socket of `nvme-csi node` and `nvme-csi all-in-one`, binary size;
           and where the attach time goes on both sides, from the kernel's trace (ftrace) of
           the measured rounds, and from the driver's own per-step timings (its log).
           The VM's file system is a throw-away overlay, so the results leave it on the
           console: base64 JSON between markers.
  render   (on the host; bench/vm/run.sh) takes that JSON out of the console log and
           writes bench/results/<date>-vm[-<build>][-reduced].md and .json.

See bench/vm/README.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import glob
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
STUBS = REPO / ".build" / "bench" / "stubs"
MiB = 1 << 20
HOST_UUID = "7d2f4a10-3b9c-4e55-8a61-0c2b9e4f1a77"
HOST_NQN = f"nqn.2014-08.org.nvmexpress:uuid:{HOST_UUID}"
TARGET_NAME = "bench"
TARGET_API = "127.0.0.1:7610"
PORTAL_ADDR, PORTAL_PORT = "127.0.0.1", "4430"
MARK_BEGIN, MARK_END, MARK_LINE = "BENCH-VM-JSON-BEGIN", "BENCH-VM-JSON-END", "BVJ:"

DEFAULTS = dict(rounds=20, fio_rounds=4, fio_runtime=3, rss_volumes=20, startup_rounds=5, replication_rounds=3,
                control_rounds=4, control_ops=100)

# fio jobs: name, rw, block size, queue depth, what is compared (iops or bandwidth)
FIO_JOBS = [
    ("randread-4k-qd1", "randread", "4k", 1, "iops"),
    ("randread-4k-qd32", "randread", "4k", 32, "iops"),
    ("randwrite-4k-qd1", "randwrite", "4k", 1, "iops"),
    ("randwrite-4k-qd32", "randwrite", "4k", 32, "iops"),
    ("read-128k-qd32", "read", "128k", 32, "bw"),
    ("write-128k-qd32", "write", "128k", 32, "bw"),
]


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[bench-vm {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(argv: list[str], check: bool = True, timeout: float = 120) -> str:
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed (exit {p.returncode}): {p.stdout.strip()}")
    return p.stdout.strip()


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def percentile(values: list[float], q: float) -> float:
    v = sorted(x for x in values if x == x)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q
    f, c = math.floor(k), math.ceil(k)
    return v[f] if f == c else v[f] + (v[c] - v[f]) * (k - f)


def summary(values: list[float]) -> dict:
    v = [x for x in values if x == x]
    return {"n": len(v), "median": percentile(v, 0.5), "p90": percentile(v, 0.9),
            "min": min(v) if v else float("nan"), "max": max(v) if v else float("nan")}


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def read_attr(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


# ---------------------------------------------------------------------------
# Processes


class Proc:
    """One process we started; only these are ever signalled."""

    def __init__(self, role: str, argv: list[str], log_path: Path):
        self.role, self.argv, self.log_path = role, argv, log_path
        self.log = open(log_path, "ab")
        self.log.write(f"\n=== {' '.join(argv)}\n".encode())
        self.log.flush()
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()


def wait_socket(path: Path, proc: Proc, timeout: float = 60) -> float:
    """Polls (every 2 ms) until the unix socket accepts a connection; seconds since the process started."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.role} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if path.exists():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(path))
                    return time.perf_counter() - proc.started
                except OSError:
                    pass
        time.sleep(0.002)
    raise BenchError(f"{proc.role}: no socket at {path} after {timeout} s:\n{proc.tail()}")


# ---------------------------------------------------------------------------
# The bench (inside the VM)


class Bench:
    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack):
        self.args, self.stack = args, stack
        self.bin = str(Path(args.bin).resolve())
        self.work = Path(args.work)
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.nvme_dir = self.work / "nvme"
        self.nvme_dir.mkdir(exist_ok=True)
        (self.nvme_dir / "hostnqn").write_text(HOST_NQN + "\n")
        (self.nvme_dir / "hostid").write_text(HOST_UUID + "\n")
        self.targets_json = self.work / "targets.json"
        self.targets_json.write_text(json.dumps({"targets": [{"name": TARGET_NAME, "address": TARGET_API}]}))
        self.socket = self.work / "csi.sock"
        self.target: Proc | None = None
        self.plugin: Proc | None = None
        self.result: dict = {"schema": 1, "notes": [], "failures": []}
        self.req = 0
        stack.callback(self.stop_all)

    # -- setup --------------------------------------------------------------

    def setup(self) -> None:
        a = self.args
        m = self.result.setdefault("method", {})
        m["kernel"] = platform.release()
        m["cpus"] = os.cpu_count()
        m["memory_kib"] = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        m["nvme_cli"] = run(["nvme", "version"], check=False).replace("\n", "; ")
        m["fio"] = run(["fio", "--version"], check=False)
        m["python_grpcio"] = __import__("grpc").__version__
        m["binary"] = self.bin
        m["binary_bytes"] = os.path.getsize(self.bin)
        m["build"] = a.build
        m["version"] = run([self.bin, "--version"], check=False)
        m["binary_sha256"] = a.binary_sha256
        m["commit"] = a.commit
        m["args"] = {k: v for k, v in vars(a).items() if k not in ("bin", "work", "mode", "binary_sha256", "commit")}
        # The store: XFS with reflink on a loop device over a sparse file on tmpfs (a file
        # store must not sit on tmpfs or overlayfs; Tests/e2e/guest.sh says why).
        volumes_mib = a.attach_size_mib + 2 * a.fio_size_mib + a.rss_volumes * a.rss_size_mib
        gib = max(2, math.ceil(volumes_mib * 1.25 / 1024) + 1)
        image = self.work / "store.img"
        with open(image, "wb") as f:
            f.truncate(gib << 30)
        self.loop = run(["losetup", "-f", "--show", str(image)])
        self.stack.callback(lambda: run(["losetup", "-d", self.loop], check=False))
        run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", self.loop])
        self.store = self.work / "store"
        self.store.mkdir(exist_ok=True)
        run(["mount", self.loop, str(self.store)])
        self.stack.callback(lambda: run(["umount", "-l", str(self.store)], check=False))
        m["store"] = f"file store on XFS (reflink) on {self.loop}, a sparse {gib} GiB file on tmpfs"
        m["nvmet"] = f"the kernel's nvmet through configfs, NVMe/TCP portal {PORTAL_ADDR}:{PORTAL_PORT} (loopback)"
        m["target_api"] = f"plaintext on loopback {TARGET_API} (--insecure-plaintext)"
        self.start_target()

    def start_target(self) -> None:
        argv = [self.bin, "target", "--listen", TARGET_API, "--store", f"file:{self.store}", "--name", TARGET_NAME,
                "--portal", f"{PORTAL_ADDR}:{PORTAL_PORT}", "--insecure-plaintext", "--log-level", "debug"]
        self.target = Proc("target", argv, self.logs / "target.log")
        deadline = time.perf_counter() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", int(TARGET_API.split(":")[1]))) == 0:
                    break
            if not self.target.alive() or time.perf_counter() > deadline:
                raise BenchError(f"the target did not start:\n{self.target.tail()}")
            time.sleep(0.05)

    def plugin_argv(self, role: str, socket_path: Path, state: Path, level: str = "debug") -> list[str]:
        argv = [self.bin, role, "--endpoint", f"unix://{socket_path}", "--state-dir", str(state),
                "--nvme-config-dir", str(self.nvme_dir), "--log-level", level]
        if role == "all-in-one":
            argv += ["--targets", str(self.targets_json), "--insecure-plaintext"]
        return argv

    def start_plugin(self, prefix: list[str] | None = None, level: str = "debug", log_name: str = "plugin.log") -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        argv = (prefix or []) + self.plugin_argv("all-in-one", self.socket, self.work / "node-state", level)
        self.plugin = Proc("all-in-one", argv, self.logs / log_name)
        wait_socket(self.socket, self.plugin)
        self.connect_clients()

    def stop_plugin(self) -> None:
        if self.plugin is not None:
            self.close_clients()
            self.plugin.stop()
            self.plugin = None

    def stop_all(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_plugin()
        if self.target is not None:
            self.target.stop()
            self.target = None

    # -- CSI ----------------------------------------------------------------

    def channel(self, path: Path):
        import grpc
        return grpc.insecure_channel(f"unix://{path}")

    def connect_clients(self) -> None:
        import csi_pb2_grpc
        self.chan = self.channel(self.socket)
        self.ident = csi_pb2_grpc.IdentityStub(self.chan)
        self.ctrl = csi_pb2_grpc.ControllerStub(self.chan)
        self.node = csi_pb2_grpc.NodeStub(self.chan)
        import csi_pb2
        self.ident.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=60, wait_for_ready=True)
        self.node_id = self.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=60).node_id

    def close_clients(self) -> None:
        with contextlib.suppress(Exception):
            self.chan.close()

    def rid(self, tag: str) -> tuple:
        """x-request-id metadata, so the plugin's log line of this call can be found."""
        self.req += 1
        return (("x-request-id", f"{tag}-{self.req}"),)

    @staticmethod
    def capability(block: bool):
        import csi_pb2
        mode = csi_pb2.VolumeCapability.AccessMode(mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER)
        if block:
            return csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=mode)
        return csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"), access_mode=mode)

    def create_and_publish(self, name: str, size_mib: int, block: bool) -> dict:
        import csi_pb2
        v = self.ctrl.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=size_mib * MiB),
            volume_capabilities=[self.capability(block)]), timeout=120).volume
        pc = self.ctrl.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=v.volume_id, node_id=self.node_id, volume_capability=self.capability(block)),
            timeout=120).publish_context
        return {"id": v.volume_id, "context": dict(v.volume_context), "publish": dict(pc), "block": block,
                "nqn": pc["subsystemNQN"], "uuid": pc["namespaceUUID"].lower(),
                "staging": str(self.work / "staging" / name), "target": str(self.work / "pods" / name / "vol")}

    def unpublish_and_delete(self, vol: dict) -> None:
        import csi_pb2
        self.ctrl.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=vol["id"], node_id=self.node_id), timeout=120)
        self.ctrl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vol["id"]), timeout=120)

    def stage(self, vol: dict, node=None, tag: str = "stage") -> None:
        import csi_pb2
        Path(vol["staging"]).mkdir(parents=True, exist_ok=True)
        (node or self.node).NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=vol["id"], publish_context=vol["publish"], staging_target_path=vol["staging"],
            volume_capability=self.capability(vol["block"]), volume_context=vol["context"]),
            timeout=120, metadata=self.rid(tag))

    def publish(self, vol: dict, tag: str = "publish") -> None:
        import csi_pb2
        Path(vol["target"]).parent.mkdir(parents=True, exist_ok=True)
        self.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=vol["id"], publish_context=vol["publish"], staging_target_path=vol["staging"],
            target_path=vol["target"], volume_capability=self.capability(vol["block"]),
            volume_context=vol["context"]), timeout=120, metadata=self.rid(tag))

    def unpublish(self, vol: dict, tag: str = "unpublish") -> None:
        import csi_pb2
        self.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=vol["id"], target_path=vol["target"]), timeout=120, metadata=self.rid(tag))

    def unstage(self, vol: dict, node=None, tag: str = "unstage") -> None:
        import csi_pb2
        (node or self.node).NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
            volume_id=vol["id"], staging_target_path=vol["staging"]), timeout=120, metadata=self.rid(tag))

    # -- the exec approach -----------------------------------------------------

    @staticmethod
    def find_device(uuid: str) -> str | None:
        """The namespace head whose UUID matches, from sysfs (as a Go driver polls it)."""
        for d in glob.glob("/sys/block/nvme*n*"):
            name = os.path.basename(d)
            if re.fullmatch(r"nvme\d+n\d+", name) and (read_attr(d + "/uuid") or "").lower() == uuid:
                size = read_attr(d + "/size")
                if size and int(size) > 0:
                    return "/dev/" + name
        return None

    def wait_gone(self, vol: dict, timeout: float = 15) -> None:
        """Untimed: between rounds, the namespace must be gone (nothing carried over)."""
        deadline = time.perf_counter() + timeout
        while self.find_device(vol["uuid"]) is not None:
            if time.perf_counter() > deadline:
                raise BenchError(f"the device of {vol['nqn']} is still there {timeout} s after detaching")
            time.sleep(0.02)

    def hand_connect(self, vol: dict, steps: dict | None = None, mark=None) -> str:
        t = time.perf_counter()
        run(["nvme", "connect", "-t", "tcp", "-a", PORTAL_ADDR, "-s", PORTAL_PORT, "-n", vol["nqn"],
             "-q", HOST_NQN, "-I", HOST_UUID])
        t_connected = time.perf_counter()
        deadline = t_connected + 30
        while (dev := self.find_device(vol["uuid"])) is None:
            if time.perf_counter() > deadline:
                raise BenchError(f"no block device for {vol['nqn']} 30 s after nvme connect")
            time.sleep(0.005)  # the driver polls every 5 ms too
        if mark:
            mark()
        if steps is not None:
            steps.setdefault("nvme connect (process)", []).append((t_connected - t) * 1000)
            steps.setdefault("poll for the device", []).append(ms_since(t_connected))
        return dev

    def hand_disconnect(self, vol: dict) -> None:
        run(["nvme", "disconnect", "-n", vol["nqn"]])

    # -- phases -------------------------------------------------------------

    def phase_startup(self) -> None:
        """Start to ready socket of `nvme-csi node` and `nvme-csi all-in-one` (interleaved)."""
        import csi_pb2
        import csi_pb2_grpc
        out: dict = {}
        for r in range(self.args.startup_rounds):
            for role in (("node", "all-in-one") if r % 2 == 0 else ("all-in-one", "node")):
                path = self.work / f"startup-{role}.sock"
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                state = self.work / f"startup-{role}-state"
                p = Proc(role, self.plugin_argv(role, path, state, "info"), self.logs / f"startup-{role}.log")
                try:
                    sock_s = wait_socket(path, p)
                    ch = self.channel(path)
                    csi_pb2_grpc.IdentityStub(ch).GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=60,
                                                               wait_for_ready=True)
                    answer_s = time.perf_counter() - p.started
                    time.sleep(1.0)
                    rss = proc_status(p.pid)
                    ch.close()
                finally:
                    p.stop()
                f = out.setdefault(role, {"socket_ms": [], "answer_ms": [], "rss_idle_kib": [], "rss_anon_kib": []})
                f["socket_ms"].append(sock_s * 1000)
                f["answer_ms"].append(answer_s * 1000)
                f["rss_idle_kib"].append(rss["VmRSS"])
                f["rss_anon_kib"].append(rss["RssAnon"])
            log(f"startup round {r + 1}: node {out['node']['answer_ms'][-1]:.0f} ms, "
                f"all-in-one {out['all-in-one']['answer_ms'][-1]:.0f} ms")
        self.result["startup"] = out

    def phase_attach(self) -> None:
        import csi_pb2
        a = self.args
        vol = self.create_and_publish("bench-attach", a.attach_size_mib, block=False)
        # Format once (the driver's mkfs), then measure attaching the formatted volume.
        self.stage(vol, tag="format")
        self.unstage(vol, tag="format-unstage")
        self.wait_gone(vol)
        self.attach_volume = vol
        mnt = self.work / "hand"
        (mnt / "staging").mkdir(parents=True, exist_ok=True)
        (mnt / "target").mkdir(parents=True, exist_ok=True)
        res = {k: {"attach_ms": [], "detach_ms": [], "steps": {}} for k in ("driver", "exec", "exec_full")}
        res["driver"]["server_ms"] = {}
        order = ["driver", "exec", "exec_full"]
        ktrace = KernelTrace(self.result["notes"]) if a.ktrace else None
        mark = ktrace.mark if ktrace else (lambda text: None)
        res["round_times"] = []
        for r in range(a.rounds):
            res["round_times"].append([time.time(), None])
            for variant in order[r % 3:] + order[:r % 3]:  # rotate which goes first
                f = res[variant]
                steps = f["steps"]
                mark(f"{variant} r{r} attach begins")
                if variant == "driver":
                    t0 = time.perf_counter()
                    self.stage(vol, tag=f"a{r}-stage")
                    t1 = time.perf_counter()
                    mark(f"{variant} r{r} NodeStageVolume returned")
                    self.publish(vol, tag=f"a{r}-publish")
                    if not os.path.ismount(vol["target"]):
                        raise BenchError(f"NodePublishVolume returned but {vol['target']} is not a mount point")
                    t2 = time.perf_counter()
                    mark(f"{variant} r{r} attach ends")
                    mark(f"{variant} r{r} detach begins")
                    self.unpublish(vol, tag=f"a{r}-unpublish")
                    t3 = time.perf_counter()
                    mark(f"{variant} r{r} NodeUnpublishVolume returned")
                    self.unstage(vol, tag=f"a{r}-unstage")
                    t4 = time.perf_counter()
                    mark(f"{variant} r{r} detach ends")
                    steps.setdefault("NodeStageVolume (client)", []).append((t1 - t0) * 1000)
                    steps.setdefault("NodePublishVolume (client)", []).append((t2 - t1) * 1000)
                    steps.setdefault("NodeUnpublishVolume (client)", []).append((t3 - t2) * 1000)
                    steps.setdefault("NodeUnstageVolume (client)", []).append((t4 - t3) * 1000)
                    # The floor under each of those: a call that does no work (untimed in the rounds).
                    t = time.perf_counter()
                    self.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), timeout=60)
                    steps.setdefault("NodeGetCapabilities (client; an RPC that does no work)", []).append(ms_since(t))
                    f["attach_ms"].append((t2 - t0) * 1000)
                    f["detach_ms"].append((t4 - t2) * 1000)
                elif variant == "exec":
                    t0 = time.perf_counter()
                    dev = self.hand_connect(vol, steps, mark=lambda: mark(f"{variant} r{r} device found"))
                    t = time.perf_counter()
                    run(["mount", "-t", "ext4", dev, str(mnt / "target")])
                    steps.setdefault("mount (process)", []).append(ms_since(t))
                    t2 = time.perf_counter()
                    mark(f"{variant} r{r} attach ends")
                    mark(f"{variant} r{r} detach begins")
                    run(["umount", str(mnt / "target")])
                    t = time.perf_counter()
                    steps.setdefault("umount (process)", []).append(ms_since(t2))
                    self.hand_disconnect(vol)
                    mark(f"{variant} r{r} detach ends")
                    steps.setdefault("nvme disconnect (process)", []).append(ms_since(t))
                    f["attach_ms"].append((t2 - t0) * 1000)
                    f["detach_ms"].append(ms_since(t2))
                else:  # exec_full: what an exec driver's stage + publish does
                    t0 = time.perf_counter()
                    dev = self.hand_connect(vol, steps, mark=lambda: mark(f"{variant} r{r} device found"))
                    t = time.perf_counter()
                    probe = run(["blkid", "-p", "-o", "export", dev], check=False)
                    if "TYPE=ext4" not in probe:
                        raise BenchError(f"blkid -p {dev} did not find the ext4 file system: {probe}")
                    steps.setdefault("blkid -p (process)", []).append(ms_since(t))
                    t = time.perf_counter()
                    run(["mount", "-t", "ext4", dev, str(mnt / "staging")])
                    steps.setdefault("mount (process)", []).append(ms_since(t))
                    t = time.perf_counter()
                    run(["mount", "--bind", str(mnt / "staging"), str(mnt / "target")])
                    steps.setdefault("mount --bind (process)", []).append(ms_since(t))
                    t2 = time.perf_counter()
                    mark(f"{variant} r{r} attach ends")
                    mark(f"{variant} r{r} detach begins")
                    run(["umount", str(mnt / "target")])
                    run(["umount", str(mnt / "staging")])
                    self.hand_disconnect(vol)
                    mark(f"{variant} r{r} detach ends")
                    f["attach_ms"].append((t2 - t0) * 1000)
                    f["detach_ms"].append(ms_since(t2))
                self.wait_gone(vol)
            res["round_times"][-1][1] = time.time()
            log(f"attach round {r + 1}/{a.rounds}: driver {res['driver']['attach_ms'][-1]:.0f} ms, "
                f"exec {res['exec']['attach_ms'][-1]:.0f} ms, exec+blkid+bind {res['exec_full']['attach_ms'][-1]:.0f} ms")
        if ktrace:
            self.result["ktrace"] = ktrace.finish()
        self.result["attach"] = res

    def server_times(self) -> None:
        """The plugin's own per-RPC times (debug log: `ms=` per request ID) for the attach rounds."""
        pattern = re.compile(r"ms=([0-9.]+).*request_id=(a\d+-(?:stage|publish|unpublish|unstage))-\d+")
        per: dict[str, list[float]] = {}
        text = (self.logs / "plugin.log").read_text(errors="replace")
        for line in text.splitlines():
            m = pattern.search(line)
            if m and " ok" in line:
                per.setdefault(m.group(2).split("-", 1)[1], []).append(float(m.group(1)))
        names = {"stage": "NodeStageVolume", "publish": "NodePublishVolume",
                 "unpublish": "NodeUnpublishVolume", "unstage": "NodeUnstageVolume"}
        self.result["attach"]["driver"]["server_ms"] = {names[k]: v for k, v in per.items()}
        # The plugin's own steps: `step_ms=name:ms,...` on its "volume staged" (info),
        # "volume published", "volume unpublished" (debug) and "volume unstaged" (info)
        # lines. The timed rounds are the last `rounds` of each (the first stage formats).
        steps: dict[str, list[dict[str, float]]] = {}
        for line in text.splitlines():
            m = re.search(r"step_ms=([a-z]+:[0-9.]+(?:,[a-z]+:[0-9.]+)*)", line)
            kind = next((k for k in ("staged", "published", "unpublished", "unstaged") if f"volume {k}" in line), None)
            if m and kind:
                laps: dict[str, float] = {}
                for part in m.group(1).split(","):
                    name, ms = part.split(":")
                    laps[name] = laps.get(name, 0.0) + float(ms)  # "record" can come twice
                steps.setdefault(kind, []).append(laps)
        rpc = {"staged": "NodeStageVolume", "published": "NodePublishVolume",
               "unpublished": "NodeUnpublishVolume", "unstaged": "NodeUnstageVolume"}
        self.result["attach"]["driver"]["own_steps"] = {
            rpc[k]: v[-self.args.rounds:] for k, v in steps.items()}
        self.result["attach"]["driver"]["log_lines_per_stage"] = [
            line.split(" ", 3)[-1][:300] for line in text.splitlines()
            if "request_id=a0-stage-" in line or ("volume staged" in line and "step_ms=" in line)][:3]

    def fio(self, path: str, job: tuple, runtime: int) -> dict:
        name, rw, bs, qd, _ = job
        out = run(["fio", f"--name={name}", f"--filename={path}", f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}",
                   "--direct=1", "--ioengine=libaio", "--time_based", f"--runtime={runtime}",
                   f"--ramp_time={self.args.fio_ramp}", "--norandommap", "--randrepeat=0", "--numjobs=1",
                   "--output-format=json"], timeout=runtime * 4 + 120)
        j = json.loads(out[out.index("{"):])["jobs"][0]
        side = j["read"] if rw in ("read", "randread") else j["write"]
        return {"iops": side["iops"], "bw_MBps": side["bw_bytes"] / 1e6, "clat_mean_us": side["clat_ns"]["mean"] / 1000,
                "clat_p99_us": side["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000}

    @staticmethod
    def ctrl_settings(dev: str) -> dict:
        """The connection's settings as the kernel reports them (the controller behind the namespace head)."""
        name = os.path.basename(dev)
        ctrl = re.sub(r"n\d+$", "", name)
        ctrls = sorted(glob.glob(f"/sys/block/{name}/device/nvme*")) or sorted(glob.glob(f"/sys/class/nvme/{ctrl}"))
        out = {}
        for c in ctrls[:1]:
            for attr in ("queue_count", "sqsize", "kato", "ctrl_loss_tmo", "reconnect_delay", "fast_io_fail_tmo",
                         "transport", "address"):
                v = read_attr(f"{c}/{attr}")
                if v is not None:
                    out[attr] = v
        for attr in ("scheduler", "nr_requests", "max_sectors_kb", "wbt_lat_usec", "write_cache", "io_poll"):
            v = read_attr(f"/sys/block/{name}/queue/{attr}")
            if v is not None:
                out[f"queue/{attr}"] = v
        return out

    def phase_fio(self) -> None:
        """fio through the driver's device and through a hand-connected namespace, job by job.

        Two block volumes, both written in full first (so reads hit data, not holes). In a
        round the driver stages and publishes one and the other is connected by hand, both
        at once, and every job runs on each side back to back (which side first alternates);
        the next round swaps the volumes, so each namespace is measured both ways. Under
        emulation the machine's speed drifts by more than the difference looked for: a
        comparison must be made within seconds, not minutes apart."""
        a = self.args
        vols = [self.create_and_publish(f"bench-fio-{c}", a.fio_size_mib, block=True) for c in "ab"]
        for vol in vols:
            dev = self.hand_connect(vol)
            run(["fio", "--name=fill", f"--filename={dev}", "--rw=write", "--bs=1M", "--iodepth=8", "--direct=1",
                 "--ioengine=libaio"], timeout=900)
            self.hand_disconnect(vol)
            self.wait_gone(vol)
        res: dict = {"jobs": [{"name": j[0], "rw": j[1], "bs": j[2], "iodepth": j[3], "metric": j[4]} for j in FIO_JOBS],
                     "driver": {}, "hand": {}, "settings": {}}
        for r in range(a.fio_rounds):
            driven, by_hand = (vols[0], vols[1]) if r % 2 == 0 else (vols[1], vols[0])
            self.stage(driven, tag=f"f{r}-stage")
            self.publish(driven, tag=f"f{r}-publish")
            dev = self.hand_connect(by_hand)
            paths = {"driver": driven["target"], "hand": dev}
            res["settings"]["driver"] = self.ctrl_settings(self.find_device(driven["uuid"]))
            res["settings"]["hand"] = self.ctrl_settings(dev)
            for i, job in enumerate(FIO_JOBS):
                for variant in (("driver", "hand") if (r + i) % 2 == 0 else ("hand", "driver")):
                    t_start = time.time()
                    sample = self.fio(paths[variant], job, a.fio_runtime)
                    sample["t0"], sample["t1"] = t_start, time.time()
                    sample["volume"] = (driven if variant == "driver" else by_hand)["id"]
                    res[variant].setdefault(job[0], []).append(sample)
            self.unpublish(driven)
            self.unstage(driven)
            self.hand_disconnect(by_hand)
            for vol in vols:
                self.wait_gone(vol)
            log(f"fio round {r + 1}/{a.fio_rounds}: " + ", ".join(
                f"{j[0]} {res['driver'][j[0]][-1]['iops']:.0f}/{res['hand'][j[0]][-1]['iops']:.0f} IOPS" for j in FIO_JOBS))
        for vol in vols:
            self.unpublish_and_delete(vol)
        self.result["fio"] = res

    def phase_rss(self) -> None:
        """RSS of a node plugin (`nvme-csi node`, its own process) idle and with N volumes staged;
        and of the all-in-one (controller + node), which published them."""
        import csi_pb2
        import csi_pb2_grpc
        a = self.args
        path = self.work / "rss-node.sock"
        node = Proc("node", self.plugin_argv("node", path, self.work / "rss-node-state", "info"),
                    self.logs / "rss-node.log")
        try:
            wait_socket(path, node)
            ch = self.channel(path)
            stub = csi_pb2_grpc.NodeStub(ch)
            stub.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=60, wait_for_ready=True)
            time.sleep(1.0)
            out = {"node_idle": proc_status(node.pid), "all_in_one_idle": proc_status(self.plugin.pid)}
            vols = []
            t0 = time.perf_counter()
            for i in range(a.rss_volumes):
                v = self.create_and_publish(f"bench-rss-{i:03d}", a.rss_size_mib, block=a.rss_block)
                self.stage(v, node=stub, tag="rss-stage")
                vols.append(v)
            out["stage_all_s"] = time.perf_counter() - t0
            time.sleep(1.0)
            out["node_staged"] = proc_status(node.pid)
            out["all_in_one_published"] = proc_status(self.plugin.pid)
            out["volumes"] = len(vols)
            out["access"] = "block" if a.rss_block else "mount (ext4, formatted at stage)"
            for v in vols:
                self.unstage(v, node=stub, tag="rss-unstage")
                self.unpublish_and_delete(v)
            out["node_after_unstage"] = proc_status(node.pid)
            ch.close()
        finally:
            node.stop()
        self.result["rss"] = out
        log(f"rss: node idle {out['node_idle']['VmRSS'] / 1024:.1f} MiB, with {len(vols)} staged "
            f"{out['node_staged']['VmRSS'] / 1024:.1f} MiB")

    # The e2e replication suite's figures (issue 11): `nvme-csi-e2e --suite replication`
    # prints one `replication:` line per measurement; each round is a whole run of it
    # (three targets with their own XFS stores and portals, md RAID1 on the node).
    REPLICATION_FIGURES = {
        "stall_ms": r"writes stalled (\d+) ms",
        "errors": r"\| errors (\d+) \|",
        "back_in_sync_ms": r"leg back in sync (\d+) ms after the target restarted",
        "restaged_in_sync_ms": r"stale leg re-added and in sync (\d+) ms after its target restarted",
        "restored_copy_ms": r"restored \d+ MiB mirror in sync (\d+) ms",
        "restored_mib": r"restored (\d+) MiB mirror",
    }

    def phase_replication(self) -> None:
        a = self.args
        e2e = a.e2e or str(Path(self.bin).with_name("nvme-csi-e2e"))
        if not os.access(e2e, os.X_OK):
            self.result["notes"].append(f"replication: no e2e harness at {e2e}: phase skipped")
            return
        run(["modprobe", "-a", "md-mod", "raid1"])
        work = self.work / "replication"
        certs = work / "certs"
        work.mkdir(exist_ok=True)
        run([str(REPO / "deploy/certs/make-certs.sh"), str(certs)], timeout=300)
        rounds = []
        for n in range(a.replication_rounds):
            stores = []
            # store-c, the smallest, is where the suite repairs a lost leg.
            for leg, mib in (("a", 768), ("b", 768), ("c", 384)):
                image, mount = work / f"{leg}.img", work / f"r{n}-{leg}"
                with open(image, "wb") as f:
                    f.truncate(mib << 20)
                loop = run(["losetup", "-f", "--show", str(image)])
                run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", loop])
                mount.mkdir()
                run(["mount", loop, str(mount)])
                stores.append((loop, mount))
            log(f"replication round {n + 1}/{a.replication_rounds}")
            t0 = time.perf_counter()
            done = subprocess.run(
                [e2e, "--suite", "replication", "--bin", str(Path(self.bin).parent), "--work", str(work / f"r{n}"),
                 "--store", f"file:{stores[0][1]}", "--second-store", f"file:{stores[1][1]}",
                 "--third-store", f"file:{stores[2][1]}", "--certs", str(certs)],
                capture_output=True, text=True, timeout=900)
            for loop, mount in stores:
                run(["umount", "-l", str(mount)], check=False)
                run(["losetup", "-d", loop], check=False)
            lines = [ln.strip() for ln in done.stdout.splitlines() if ln.strip().startswith("replication:")]
            if done.returncode != 0:
                tail = "\n".join(done.stdout.splitlines()[-40:])
                raise BenchError(f"the replication suite failed (round {n + 1}):\n{tail}")
            figures = {}
            for key, pattern in self.REPLICATION_FIGURES.items():
                found = [re.search(pattern, ln) for ln in lines]
                values = [int(m_.group(1)) for m_ in found if m_]
                if values:
                    figures[key] = values[0]
            figures["suite_s"] = time.perf_counter() - t0
            figures["lines"] = lines
            rounds.append(figures)
        self.result["replication"] = {"rounds": rounds}

    # The control plane against the kernel's nvmet and against the simulated one (issue
    # 13: "run the same control-plane bench once inside the VM against real nvmet configfs
    # too"). Two targets with the same flags but --configfs, each on its own XFS store,
    # each behind its own `nvme-csi controller`; the rounds alternate which goes first.
    CONTROL_SIDES = (("configfs", "the kernel's nvmet (configfs)"),
                     ("directory", "simulated nvmet (a directory on tmpfs, as `make bench` runs it)"))

    def phase_control(self) -> None:
        import csi_pb2
        import csi_pb2_grpc
        from concurrent.futures import ThreadPoolExecutor
        a = self.args
        # Its own targets use the bench target's port and portal: that one goes first.
        log("control: stopping the bench's target and plugin")
        self.stop_all()
        procs: list[Proc] = []
        stubs = {}
        try:
            for index, (side, _) in enumerate(self.CONTROL_SIDES):
                store = self.control_store(side)
                api = f"127.0.0.1:{7620 + index}"
                argv = [self.bin, "target", "--listen", api, "--store", f"file:{store}", "--name", f"cp-{side}",
                        "--portal", f"{PORTAL_ADDR}:{PORTAL_PORT}", "--insecure-plaintext", "--log-level", "warning"]
                if side == "directory":
                    configfs = self.work / "simulated-configfs"
                    for sub in ("ports", "subsystems", "hosts"):
                        (configfs / "nvmet" / sub).mkdir(parents=True, exist_ok=True)
                    argv += ["--configfs", str(configfs)]
                procs.append(Proc(f"target {side}", argv, self.logs / f"control-target-{side}.log"))
                targets = self.work / f"control-targets-{side}.json"
                targets.write_text(json.dumps({"targets": [{"name": f"cp-{side}", "address": api}]}))
                path = self.work / f"control-{side}.sock"
                ctl = Proc(f"controller {side}", [self.bin, "controller", "--endpoint", f"unix://{path}", "--targets",
                                                  str(targets), "--insecure-plaintext", "--log-level", "warning"],
                           self.logs / f"control-controller-{side}.log")
                procs.append(ctl)
                wait_socket(path, ctl)
                log(f"control: {side} controller serving; waiting for it to reach its target")
                ch = self.channel(path)
                stubs[side] = csi_pb2_grpc.ControllerStub(ch)
                # Ready: the controller reaches its target (CreateVolume would answer Unavailable before).
                deadline = time.perf_counter() + 120
                while csi_pb2_grpc.IdentityStub(ch).Probe(csi_pb2.ProbeRequest(), timeout=60).ready.value is not True:
                    target = procs[-2]
                    if not target.alive() or time.perf_counter() > deadline:
                        raise BenchError(f"controller {side} never reached its target:\n{target.tail()}\n{ctl.tail()}")
                    time.sleep(0.1)
            log("control: both sides ready")
            cap = self.capability(block=False)
            ops = {side: {k: [] for k in ("create", "publish", "unpublish", "delete")} for side, _ in self.CONTROL_SIDES}
            concurrent = {side: [] for side, _ in self.CONTROL_SIDES}

            def create(stub, name):
                return stub.CreateVolume(csi_pb2.CreateVolumeRequest(
                    name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=MiB),
                    volume_capabilities=[cap]), timeout=120).volume.volume_id

            def timed(bucket, call, *args, **kwargs):
                t = time.perf_counter()
                out = call(*args, **kwargs)
                bucket.append(ms_since(t))
                return out

            for n in range(a.control_rounds):
                order = self.CONTROL_SIDES if n % 2 == 0 else self.CONTROL_SIDES[::-1]
                for side, _ in order:
                    stub, o = stubs[side], ops[side]
                    ids = [timed(o["create"], create, stub, f"cp-{n}-{i}") for i in range(a.control_ops)]
                    for vid in ids:
                        timed(o["publish"], stub.ControllerPublishVolume, csi_pb2.ControllerPublishVolumeRequest(
                            volume_id=vid, node_id=self.node_id, volume_capability=cap), timeout=120)
                    for vid in ids:
                        timed(o["unpublish"], stub.ControllerUnpublishVolume, csi_pb2.ControllerUnpublishVolumeRequest(
                            volume_id=vid, node_id=self.node_id), timeout=120)
                    for vid in ids:
                        timed(o["delete"], stub.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=vid), timeout=120)
                    # Throughput with 16 concurrent clients (threads on one channel, as the sidecars share one).
                    with ThreadPoolExecutor(16) as pool:
                        t = time.perf_counter()
                        ids = list(pool.map(lambda i: create(stub, f"cp-{n}-c{i}"), range(a.control_ops)))
                        concurrent[side].append(a.control_ops / (time.perf_counter() - t))
                        list(pool.map(lambda vid: stub.DeleteVolume(
                            csi_pb2.DeleteVolumeRequest(volume_id=vid), timeout=120), ids))
                log(f"control round {n + 1}/{a.control_rounds}: create p50 "
                    + ", ".join(f"{side} {percentile(ops[side]['create'], .5):.1f} ms" for side, _ in order))
            self.result["control"] = {
                "sides": [{"side": side, "what": what, "ops_ms": ops[side], "create_16_per_s": concurrent[side]}
                          for side, what in self.CONTROL_SIDES],
                "ops_per_round": a.control_ops, "rounds": a.control_rounds}
        except Exception:
            for proc in procs:
                print(f"--- {proc.role} log (tail)\n{proc.tail(40)}", flush=True)
            raise
        finally:
            for proc in reversed(procs):
                proc.stop()

    def control_store(self, side: str) -> Path:
        """A fresh XFS store like the bench's (a store belongs to the target that made it)."""
        image = self.work / f"control-store-{side}.img"
        with open(image, "wb") as f:
            f.truncate(2 << 30)
        loop = run(["losetup", "-f", "--show", str(image)])
        self.stack.callback(lambda: run(["losetup", "-d", loop], check=False))
        run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", loop])
        store = self.work / f"control-store-{side}"
        store.mkdir(exist_ok=True)
        run(["mount", loop, str(store)])
        self.stack.callback(lambda: run(["umount", "-l", str(store)], check=False))
        return store

    def cleanup_attach(self) -> None:
        self.unpublish_and_delete(self.attach_volume)

    def main(self) -> None:
        a = self.args
        t0 = time.perf_counter()
        self.setup()
        log("set up: store, nvmet, target")
        phases = [p for p in a.phases.split(",") if p]
        if "startup" in phases:
            self.phase_startup()
        self.start_plugin()
        log("all-in-one plugin serving")
        self.result["all_in_one_idle"] = proc_status(self.plugin.pid)
        if "attach" in phases:
            self.phase_attach()
            self.server_times()
        if "fio" in phases:
            self.phase_fio()
        if "rss" in phases:
            self.phase_rss()
        if "attach" in phases:
            self.cleanup_attach()
        if "control" in phases:
            self.phase_control()
        if "replication" in phases:
            # Its own targets use the ports this bench's target has: that one goes first.
            self.stop_all()
            self.phase_replication()
        self.result["elapsed_s"] = time.perf_counter() - t0


# ---------------------------------------------------------------------------
# The kernel's trace (ftrace): where the attach time goes, on both sides


TRACEFS = Path("/sys/kernel/tracing")
# kprobes (each optional: a kernel without the symbol skips it, and the results say so)
KPROBES = [
    ("connect", "p:bench/connect nvmf_dev_write"),          # the write to /dev/nvme-fabrics: the connect
    ("connect_ret", "r:bench/connect_ret nvmf_dev_write"),
    ("disk_added", "r:bench/disk_added device_add_disk"),   # a block device exists (path, then head)
    ("delete", "p:bench/delete nvme_sysfs_delete"),         # a controller's delete_controller write
    ("delete_ret", "r:bench/delete_ret nvme_sysfs_delete"),
]
TRACEPOINTS = ["sched/sched_process_fork", "sched/sched_process_exec", "sched/sched_process_exit",
               "syscalls/sys_enter_mount", "syscalls/sys_exit_mount", "syscalls/sys_enter_umount",
               "syscalls/sys_exit_umount"]
TRACE_LINE = re.compile(r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+\[\d+\]\s+\S+\s+(?P<ts>\d+\.\d+):\s+(?P<rest>.*)$")
MS_BIND = 0x1000


class KernelTrace:
    """ftrace during the attach rounds: tracepoints (fork, exec and exit of processes;
    mount(2), umount(2)), kprobes on the kernel's side of a connect (the write to
    /dev/nvme-fabrics), on a block device being added and on a controller's deletion,
    and the client's markers, all in one buffer on one clock. Unlike ptrace (strace),
    nothing is stopped: an event costs the kernel microseconds, so the traced rounds are
    the measured rounds."""

    def __init__(self, notes: list[str]):
        self.notes = notes
        if not (TRACEFS / "trace_marker").exists():
            run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)])
        self.write("tracing_on", "0")
        self.write("trace", "")
        self.write("buffer_size_kb", "8192")
        self.events: list[str] = []
        for name, probe in KPROBES:
            try:
                self.write("kprobe_events", probe + "\n", append=True)
                self.events.append(f"bench/{name}")
            except OSError as e:
                notes.append(f"kernel trace: no kprobe {probe!r} ({e.strerror}): that step is not split out")
        for tp in TRACEPOINTS:
            if (TRACEFS / "events" / tp).exists():
                self.events.append(tp)
            else:
                notes.append(f"kernel trace: no tracepoint {tp}")
        for ev in self.events:
            self.write(f"events/{ev}/enable", "1")
        self.write("tracing_on", "1")
        self.marker = os.open(TRACEFS / "trace_marker", os.O_WRONLY)

    @staticmethod
    def write(name: str, text: str, append: bool = False) -> None:
        fd = os.open(TRACEFS / name, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def mark(self, text: str) -> None:
        os.write(self.marker, f"bench: {text}".encode())

    def finish(self) -> dict:
        self.write("tracing_on", "0")
        os.close(self.marker)
        text = (TRACEFS / "trace").read_text(errors="replace")
        for ev in self.events:
            with contextlib.suppress(OSError):
                self.write(f"events/{ev}/enable", "0")
        lost = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)", text)
        if lost and lost.group(1) != lost.group(2):
            self.notes.append(f"kernel trace: the buffer overflowed ({lost.group(1)} of {lost.group(2)} events kept)")
        return analyse_ktrace(text, self.events)


def parse_ktrace(text: str) -> list[tuple[float, int, str, str, str]]:
    """(timestamp s, pid, comm, kind, detail) per event."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = TRACE_LINE.match(line)
        if not m:
            continue
        ts, pid, comm, rest = float(m.group("ts")), int(m.group("pid")), m.group("comm").strip(), m.group("rest")
        if rest.startswith("tracing_mark_write: "):
            out.append((ts, pid, comm, "marker", rest[len("tracing_mark_write: "):].strip()))
        elif rest.startswith("sys_") and " -> " in rest:
            out.append((ts, pid, comm, rest.split(" ->")[0] + " ->", rest))
        elif rest.startswith("sys_"):
            out.append((ts, pid, comm, rest.split("(")[0], rest))
        else:
            kind, _, detail = rest.partition(":")
            out.append((ts, pid, comm, kind, detail.strip()))
    return out


def field(detail: str, key: str) -> str:
    m = re.search(rf"\b{key}=(\S+)", detail)
    return m.group(1) if m else ""


def landmarks(events: list, prefix: str) -> list[tuple[float, str]]:
    """What happened in one window, as labelled instants: the client's markers, the kernel's
    connect and device creation, processes started (fork, exec) and ended, mounts."""
    exe = {int(field(d, "pid")): os.path.basename(field(d, "filename")) for _, _, _, k, d in events
           if k == "sched_process_exec"}
    out: list[tuple[float, str]] = []
    for ts, pid, comm, kind, d in events:
        label = None
        if kind == "marker" and d.startswith(prefix):
            label = d[len(prefix):]
        elif kind == "connect":
            label = "kernel connect begins (write to /dev/nvme-fabrics)"
        elif kind == "connect_ret":
            label = "kernel connect returns"
        elif kind == "disk_added":
            label = "block device added (kernel)"
        elif kind == "delete":
            label = "controller delete begins (kernel)"
        elif kind == "delete_ret":
            label = "controller deleted (kernel)"
        elif kind == "sched_process_fork":
            child = int(field(d, "child_pid") or 0)
            if child in exe:
                label = f"fork for {exe[child]}"
        elif kind == "sched_process_exec":
            label = f"exec {exe.get(pid, '?')}"
        elif kind == "sched_process_exit" and pid in exe:
            label = f"{exe[pid]} exits"
        elif kind == "sys_mount":
            flags = re.search(r"flags: (?:0x)?([0-9a-f]+)", d)
            label = "mount(2) bind begins" if flags and int(flags.group(1), 16) & MS_BIND else "mount(2) begins"
        elif kind == "sys_mount ->":
            label = "mount(2) returns"
        elif kind == "sys_umount":
            label = "umount(2) begins"
        elif kind == "sys_umount ->":
            label = "umount(2) returns"
        if label is None:
            continue
        if out and out[-1][1] == label:  # e.g. the path's disk, then the namespace head's: keep the last
            out[-1] = (ts, label)
        else:
            out.append((ts, label))
    return out


OWN_CODE = "own code between the events (nvme-csi: gRPC at both ends, checks, records, polling; exec: Python)"


def categorise(marks: list[tuple[float, str]]) -> dict[str, float]:
    """One round's time by what was running: the kernel connecting (with the modprobe it
    starts), the namespace scan until the block device exists, the kernel's mount(2) and
    umount(2), a controller's deletion, a helper process (from its fork to its exit), or
    else the caller's own code."""
    out: dict[str, float] = {}
    running: list[str] = []
    state = {"connect": False, "delete": False, "mount": False}
    for (t_a, a), (t_b, b) in zip(marks, marks[1:]):
        if a == "kernel connect begins (write to /dev/nvme-fabrics)":
            state["connect"] = True
        elif a == "kernel connect returns":
            state["connect"] = False
        elif a == "controller delete begins (kernel)":
            state["delete"] = True
        elif a == "controller deleted (kernel)":
            state["delete"] = False
        elif a.startswith("mount(2)") or a.startswith("umount(2)"):
            state["mount"] = not a.endswith("returns")
        elif a.startswith("fork for "):
            running.append(a[len("fork for "):])
        elif a.endswith(" exits") and a[:-len(" exits")] in running:
            running.remove(a[:-len(" exits")])
        helpers = [x for x in running if x != "modprobe"]
        if state["mount"]:
            cat = "kernel: mount(2) / umount(2)"
        elif state["connect"]:
            cat = "kernel: connect (the write to /dev/nvme-fabrics, with the modprobe the kernel starts)"
        elif state["delete"]:
            cat = "kernel: controller deletion"
        elif a == "kernel connect returns" and b == "block device added (kernel)":
            cat = "kernel: namespace scan until the block device exists"
        elif helpers:
            cat = f"process {helpers[-1]} (fork to exit)"
        else:
            cat = OWN_CODE
        out[cat] = out.get(cat, 0.0) + (t_b - t_a) * 1000
    return out


def analyse_ktrace(text: str, enabled: list[str]) -> dict:
    events = parse_ktrace(text)
    windows: dict[tuple[str, str], list[list[tuple[str, float]]]] = {}
    examples: dict[str, list] = {}
    groups: dict[tuple[str, str], list[dict[str, float]]] = {}
    begin = re.compile(r"bench: (\S+) r(\d+) (attach|detach) begins$")
    for i, (ts, _, _, kind, d) in enumerate(events):
        m = begin.match(d) if kind == "marker" else None
        if not m:
            continue
        variant, rnd, phase = m.groups()
        prefix = f"bench: {variant} r{rnd} "
        end = next((j for j in range(i + 1, len(events)) if events[j][3] == "marker"
                    and events[j][4] == f"{prefix}{phase} ends"), None)
        if end is None:
            continue
        marks = landmarks(events[i:end + 1], prefix)
        if rnd == "0" or f"{variant} {phase}" not in examples:
            examples[f"{variant} {phase}"] = [(round((t - marks[0][0]) * 1000, 2), lbl) for t, lbl in marks]
        segs, seen = [], {}
        for (t_a, a), (t_b, b) in zip(marks, marks[1:]):
            key = f"{a} → {b}"
            seen[key] = seen.get(key, 0) + 1
            segs.append((key if seen[key] == 1 else f"{key} #{seen[key]}", (t_b - t_a) * 1000))
        windows.setdefault((variant, phase), []).append(segs)
        groups.setdefault((variant, phase), []).append(categorise(marks))
    out: dict = {"enabled": enabled, "breakdown": {}, "examples": examples, "events": len(events)}
    for (variant, phase), rounds in windows.items():
        order: list[str] = []
        for segs in sorted(rounds, key=len, reverse=True):
            order += [k for k, _ in segs if k not in order]
        rows = []
        for k in order:
            vals = [v for segs in rounds for kk, v in segs if kk == k]
            rows.append({"segment": k, "p50_ms": percentile(vals, .5), "p90_ms": percentile(vals, .9),
                         "rounds": len(vals)})
        cats: list[str] = []
        for g in groups[(variant, phase)]:
            cats += [c for c in g if c not in cats]
        summary_rows = [{"group": c, "p50_ms": percentile([g.get(c, 0.0) for g in groups[(variant, phase)]], .5)}
                        for c in cats]
        out["breakdown"][f"{variant} {phase}"] = {"rounds": len(rounds), "rows": rows, "groups": summary_rows,
                                                  "total_p50_ms": percentile([sum(v for _, v in s) for s in rounds], .5)}
    return out

# ---------------------------------------------------------------------------
# Rendering (on the host)


def fmt_ms(v: float) -> str:
    if v != v:
        return "—"
    return f"{v:,.0f} ms" if v >= 100 else f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def fmt_mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def ratio(a: float, b: float) -> str:
    return "—" if not b or a != a or b != b else f"{a / b:.2f}×"


def extract(console: str) -> dict:
    lines, inside = [], False
    for raw in console.splitlines():
        line = raw.strip().replace("\r", "")
        if MARK_BEGIN in line:
            inside, lines = True, []
        elif MARK_END in line:
            inside = False
        elif inside and line.startswith(MARK_LINE):
            lines.append(line[len(MARK_LINE):])
    if not lines:
        raise BenchError("no results in the VM's console (look for the bench's errors above)")
    return json.loads(zlib.decompress(base64.b64decode("".join(lines))))


QUIET = ("tee", "apt-cache", "kdamond", "kworker", "ksoftirqd", "rcu_", "bash", "sleep", "ps")


def host_busy(r: dict) -> list[float]:
    """The sample times at which the host ran something else at ≥ 20% of a core (ps)."""
    out = []
    for x in (r.get("host") or {}).get("load_samples") or []:
        vms = re.search(r"vms:(\d+)", x["top"])
        if vms and int(vms.group(1)) > 1:  # another VM besides ours
            out.append(x["t"])
            continue
        for p in x["top"].split(","):
            name, _, cpu = p.rpartition(":")
            if name and cpu.replace(".", "", 1).isdigit() and float(cpu) >= 20 and not name.startswith(QUIET):
                out.append(x["t"])
                break
    return out


def disturbed(r: dict, t0: float, t1: float) -> bool:
    """Whether another process was busy on the host between t0 and t1 (guest clock, set from the
    host's at boot; the sampler looks every 10 s)."""
    return any(t0 - 10 <= t <= t1 + 10 for t in host_busy(r))


def fio_pairs(r: dict, job: dict) -> list[tuple[float, float, bool]]:
    fio = r["fio"]
    key = "iops" if job["metric"] == "iops" else "bw_MBps"
    out = []
    for d, h in zip(fio["driver"].get(job["name"], []), fio["hand"].get(job["name"], [])):
        t0 = min(d.get("t0", 0), h.get("t0", 0))
        t1 = max(d.get("t1", 0), h.get("t1", 0))
        out.append((d[key], h[key], bool(t0) and disturbed(r, t0, t1)))  # no times (older runs): unmarked
    return out


def summary_md(r: dict) -> list[str]:
    """The headline figures, each with its ratio."""
    out = ["## Summary", ""]
    build = r["method"]["build"]
    at = r.get("attach")
    if at:
        md = lambda x: summary(x)["median"]  # noqa: E731
        d, e, f = at["driver"], at["exec"], at["exec_full"]
        out.append(f"- Attach (NodeStage + NodePublish of a formatted ext4 volume, to a usable mount): "
                   f"{fmt_ms(md(d['attach_ms']))} against {fmt_ms(md(e['attach_ms']))} for exec `nvme connect` + poll "
                   f"+ `mount`: **{ratio(md(d['attach_ms']), md(e['attach_ms']))}** ({ratio(md(d['attach_ms']), md(f['attach_ms']))} "
                   f"of exec with `blkid` and a bind mount); detach **{ratio(md(d['detach_ms']), md(e['detach_ms']))}**. "
                   f"Goal: ≤ 0.6×.")
        groups = ((r.get("ktrace") or {}).get("breakdown") or {}).get("driver attach", {}).get("groups") or []
        if groups:
            total = sum(g["p50_ms"] for g in groups) or float("nan")
            top = sorted(groups, key=lambda g: -g["p50_ms"])[:3]
            out.append("- Where the driver's attach goes (kernel trace): " + "; ".join(
                f"{g['group'].split(' (')[0]} {g['p50_ms'] / total:.0%}" for g in top) + ".")
    fio = r.get("fio")
    if fio:
        rs, clean_n, all_n = [], 0, 0
        for job in fio["jobs"]:
            pairs = fio_pairs(r, job)
            clean = [(x, y) for x, y, bad in pairs if not bad and y]
            all_n, clean_n = len(pairs), len(clean)
            use = clean or [(x, y) for x, y, _ in pairs if y]
            rs.append((job["name"], percentile([x / y for x, y in use], .5)))
        which = (f"over the {clean_n} of {all_n} rounds the host left alone" if 0 < clean_n < all_n
                 else "every round" if clean_n == all_n else "no round was free of other host activity")
        out.append(f"- Data path, fio nvme-csi / hand-connected (median of back-to-back pairs, {which}): "
                   + ", ".join(f"{n} {v:.2f}×" for n, v in rs) + ". Goal: ≥ 0.98×.")
    rss = r.get("rss")
    if rss:
        out.append(f"- Node plugin RSS: {fmt_mib(rss['node_idle']['VmRSS'])} idle, "
                   f"{fmt_mib(rss['node_staged']['VmRSS'])} with {rss['volumes']} volumes staged "
                   f"(anonymous memory {fmt_mib(rss['node_idle']['RssAnon'])} → {fmt_mib(rss['node_staged']['RssAnon'])}).")
    st = r.get("startup")
    if st:
        out.append("- Start to ready socket: " + ", ".join(
            f"`{role}` {fmt_ms(percentile(v['socket_ms'], .5))}" for role, v in st.items()) + f" (under {r.get('accel')}).")
    cp = r.get("control")
    if cp:
        real, sim = cp["sides"]
        p50 = lambda side, op: percentile(side["ops_ms"][op], .5)  # noqa: E731
        out.append("- Control plane, the kernel's nvmet / simulated nvmet (p50 per call): " + ", ".join(
            f"{op} {ratio(p50(real, op), p50(sim, op))}" for op in ("create", "publish", "unpublish", "delete"))
            + f"; CreateVolume with 16 clients {percentile(real['create_16_per_s'], .5):.0f}/s against "
            f"{percentile(sim['create_16_per_s'], .5):.0f}/s.")
    rep = r.get("replication")
    if rep and rep["rounds"]:
        med = lambda key: percentile([x[key] for x in rep["rounds"] if key in x], .5)  # noqa: E731
        errors = sum(x.get("errors", 0) for x in rep["rounds"])
        out.append(f"- Replicated volume (replicas=2), a target killed -9 under fio-verified writes: writes stalled "
                   f"**{fmt_ms(med('stall_ms'))}** (fastIoFailTmo 2 s), {errors} I/O errors; the leg back in sync "
                   f"{fmt_ms(med('back_in_sync_ms'))} after its target restarted (bitmap resync); a restored "
                   f"{rep['rounds'][0].get('restored_mib', '?')} MiB mirror copied onto its blank leg at "
                   f"≥ {rep['rounds'][0].get('restored_mib', 0) * 1000 / med('restored_copy_ms'):.1f} MiB/s "
                   f"(median of {len(rep['rounds'])} runs).")
    out.append(f"- {build} build, accel={r.get('accel')}: see Method.")
    return out + [""]


def render_md(r: dict, title: str) -> str:
    m = r["method"]
    a = m["args"]
    out = [f"# {title}", ""]
    if r.get("trial"):
        out += [f"**{r['trial']}**", ""]
    out += ["Issue 13, `make bench` items 2–4, measured inside one VM run (`make bench-vm`, bench/vm/). "
            "Every comparison below was measured in this one run, the rounds of the things compared "
            "interleaved (each round rotates which goes first).", ""]
    out += summary_md(r) + ["## Method", "",
            f"- Machine: {r.get('host', {}).get('cpus', '?')}-core host ({r.get('host', {}).get('cpu', '?')}); "
            f"guest: Debian's kernel {m['kernel']} under qemu, **accel={r.get('accel', '?')}**, "
            f"{m['cpus']} vCPUs, {m['memory_kib'] // 1024} MiB; the host's root shared read-only (9p + tmpfs overlay), "
            "no network card (everything over the guest's loopback).",
            f"- Binary: **{m['build']} build** ({m['version']}, {m['binary_bytes'] / 1e6:.0f} MB: `{m['binary']}`, "
            f"sha256 {m.get('binary_sha256') or '?'}…); repository at {m.get('commit') or '?'}.",
            f"- Target: `nvme-csi target`, {m['store']}; {m['nvmet']}; target API {m['target_api']}.",
            "- Driver side: `nvme-csi all-in-one` (Controller + Node on one unix socket, `--log-level debug`), "
            f"driven by Python grpcio {m['python_grpcio']} (sync stubs generated from proto/csi.proto).",
            f"- Exec side: {m['nvme_cli']}; {m['fio']}.",
            f"- Rounds: attach {a['rounds']}, fio {a['fio_rounds']} × {a['fio_runtime']} s per job "
            f"(+{a['fio_ramp']} s ramp), start-up {a['startup_rounds']}, RSS with {a['rss_volumes']} volumes; "
            "medians and p90 over rounds.",
            f"- Under TCG the guest's CPU is emulated: absolute times and IOPS are far below real hardware and "
            "mean little; the ratios between the two sides, measured in the same run on the same target, are the "
            "point; and process start-up is inflated more than in-process work, which weighs on the exec side and on "
            "the driver's blkid alike." if r.get("accel") == "tcg" else
            "- Ratios between the two sides, measured in the same run on the same target, are the point.",
            f"- Whole run inside the VM: {r.get('elapsed_s', 0):.0f} s.", ""]

    at = r.get("attach")
    if at:
        d, e, f = at["driver"], at["exec"], at["exec_full"]
        md = lambda x: summary(x)["median"]  # noqa: E731
        p9 = lambda x: summary(x)["p90"]  # noqa: E731
        out += ["## 2. Attach: NodeStage + NodePublish vs exec `nvme connect`", "",
                f"One {a['attach_size_mib']} MiB volume, formatted ext4 once by the driver beforehand, published to "
                "the node (ControllerPublishVolume); every round attaches and detaches it once per side. "
                "Attach ends at a usable mount (the publish target is a mount point); the namespace is gone "
                "(checked, untimed) before the next attach.", "",
                "| | attach p50 | attach p90 | detach p50 | detach p90 |", "| --- | --- | --- | --- | --- |",
                f"| nvme-csi: NodeStageVolume + NodePublishVolume (gRPC) / NodeUnpublish + NodeUnstage | "
                f"{fmt_ms(md(d['attach_ms']))} | {fmt_ms(p9(d['attach_ms']))} | {fmt_ms(md(d['detach_ms']))} | "
                f"{fmt_ms(p9(d['detach_ms']))} |",
                f"| exec: `nvme connect` + poll sysfs for the namespace UUID (5 ms) + `mount` / `umount` + "
                f"`nvme disconnect` | {fmt_ms(md(e['attach_ms']))} | {fmt_ms(p9(e['attach_ms']))} | "
                f"{fmt_ms(md(e['detach_ms']))} | {fmt_ms(p9(e['detach_ms']))} |",
                f"| exec as a CSI driver does it: the above + `blkid -p` + `mount --bind` (stage + publish) | "
                f"{fmt_ms(md(f['attach_ms']))} | {fmt_ms(p9(f['attach_ms']))} | {fmt_ms(md(f['detach_ms']))} | "
                f"{fmt_ms(p9(f['detach_ms']))} |", "",
                *([f"{sum(1 for t0, t1 in at['round_times'] if t1 and disturbed(r, t0, t1))} of "
                   f"{len(at['round_times'])} rounds overlapped other activity on the host (Notes).", ""]
                  if at.get("round_times") and (r.get("host") or {}).get("load_samples") else []),
                "Per round (the three sides back to back), nvme-csi / exec: attach " + ", ".join(
                    f"{x / y:.2f}" for x, y in zip(d["attach_ms"], e["attach_ms"])) + f" (median "
                f"{percentile([x / y for x, y in zip(d['attach_ms'], e['attach_ms'])], .5):.2f}×).", "",
                f"**Ratio nvme-csi / exec (medians): attach {ratio(md(d['attach_ms']), md(e['attach_ms']))}, "
                f"detach {ratio(md(d['detach_ms']), md(e['detach_ms']))}**; against exec with blkid and a bind "
                f"mount: attach {ratio(md(d['attach_ms']), md(f['attach_ms']))}, detach "
                f"{ratio(md(d['detach_ms']), md(f['detach_ms']))}. (Goal in issue 13: attach ≤ 0.6× exec-and-poll.)",
                "", "Steps, medians over the rounds (client-side clocks; the exec steps include starting each process):",
                "", "| step | p50 | p90 |", "| --- | --- | --- |"]
        for name, side in (("nvme-csi", d), ("exec", e), ("exec + blkid + bind", f)):
            for step, vals in side["steps"].items():
                out.append(f"| {name}: {step} | {fmt_ms(md(vals))} | {fmt_ms(p9(vals))} |")
        sv = d.get("server_ms") or {}
        if sv:
            out += ["", "The plugin's own time per RPC (its debug log: one `ok` line with `ms=` per request; "
                    "client-side minus this is gRPC and Python):", "", "| RPC | server p50 | p90 |", "| --- | --- | --- |"]
            for k, v in sv.items():
                out.append(f"| {k} | {fmt_ms(md(v))} | {fmt_ms(p9(v))} |")
        own = d.get("own_steps") or {}
        out += ["", "**Where the driver's time goes.** The plugin logs the time of each step of a stage, publish, "
                "unpublish and unstage (`step_ms=`; stage and unstage at info, publish and unpublish at debug), "
                "e.g.:", "", "```"]
        out += [ln for ln in d.get("log_lines_per_stage", [])] + ["```", ""]
        if own:
            out += ["Its steps over the timed rounds (`lock`: taking the volume's lock, which waits only for a background check; `checks`: records "
                    "and kernel state read before acting; `record`: the staging record's durable writes):", "",
                    "| RPC | step | p50 | p90 |", "| --- | --- | --- | --- |"]
            for rpc_name, rounds in own.items():
                names_seen: list[str] = []
                for laps in rounds:
                    names_seen += [n for n in laps if n not in names_seen]
                for n in names_seen:
                    vals = [laps[n] for laps in rounds if n in laps]
                    out.append(f"| {rpc_name} | {n} | {fmt_ms(md(vals))} | {fmt_ms(p9(vals))} |")
            out.append("")
        kt = r.get("ktrace")
        if kt and kt.get("breakdown"):
            out += ["So the steps come from the kernel's trace (ftrace) of these same rounds, on both sides: "
                    "tracepoints for processes (fork, exec, exit) and mount(2)/umount(2), kprobes on the kernel's "
                    "connect (`nvmf_dev_write`: the write to /dev/nvme-fabrics), on a block device being added "
                    "(`device_add_disk`, return) and on a controller's deletion (`nvme_sysfs_delete`), and the "
                    "client's markers (`trace_marker`), on one clock. Nothing is stopped (no ptrace): the traced "
                    "rounds are the measured rounds. Each row is the time from one event to the next, median "
                    "over the rounds that had both (a row seen in fewer rounds than the others is a race, e.g. "
                    "a device that appeared before the connect returned).", ""]
            names = {"driver": "nvme-csi", "exec": "exec", "exec_full": "exec + blkid + bind"}
            out += ["In short (per round, the time by what was running, medians):", "",
                    "| side | phase | " + " | ".join(["what", "p50", "share"]) + " |", "| --- | --- | --- | --- | --- |"]
            for phase in ("attach", "detach"):
                for variant in ("driver", "exec", "exec_full"):
                    b = kt["breakdown"].get(f"{variant} {phase}")
                    if not b:
                        continue
                    total = sum(g["p50_ms"] for g in b["groups"]) or float("nan")
                    for g in sorted(b["groups"], key=lambda g: -g["p50_ms"]):
                        out.append(f"| {names[variant]} | {phase} | {g['group']} | {fmt_ms(g['p50_ms'])} | "
                                   f"{g['p50_ms'] / total:.0%} |")
            out += ["", "Event by event:", ""]
            for phase in ("attach", "detach"):
                for variant in ("driver", "exec", "exec_full"):
                    b = kt["breakdown"].get(f"{variant} {phase}")
                    if not b:
                        continue
                    out += [f"**{names[variant]}, {phase}** (sum of medians of the steps; total p50 "
                            f"{fmt_ms(b['total_p50_ms'])}, {b['rounds']} rounds):", "",
                            "| from → to | p50 | p90 | rounds |", "| --- | --- | --- | --- |"]
                    for row in b["rows"]:
                        out.append(f"| {row['segment']} | {fmt_ms(row['p50_ms'])} | {fmt_ms(row['p90_ms'])} | "
                                   f"{row['rounds']} |")
                    out.append("")
            if kt.get("examples"):
                out += ["<details><summary>The first round's events on each side (ms from the start)</summary>", ""]
                for k, marks in kt["examples"].items():
                    out += [f"{k}:", "", "```"] + [f"{t:9.1f}  {lbl}" for t, lbl in marks] + ["```", ""]
                out += ["</details>", ""]

    fio = r.get("fio")
    if fio:
        out += ["## 3. Data path: fio through the driver's device vs a hand-connected namespace", "",
                f"Two {a['fio_size_mib']} MiB block volumes, each written in full once first (so reads hit data, "
                "not holes). In each round the driver stages and publishes one with a block capability (fio on the "
                "published device file) while the other is connected by hand (`nvme connect` with nvme-cli's "
                "defaults; fio on /dev/nvmeXnY); each job then runs on both sides back to back, which side first "
                "alternating, and the next round swaps the volumes, so every namespace is measured both ways. "
                f"fio: `--direct=1 --ioengine=libaio --time_based --runtime={a['fio_runtime']} "
                f"--ramp_time={a['fio_ramp']} --norandommap`, one job. Ratio = nvme-csi / hand for each back-to-back "
                "pair, median over rounds (higher is better for the driver; 1.00 is equal).", "",
                "A pair marked † ran while another process was busy on the host (the host's load sampler, "
                "see Notes): under emulation that moves IOPS by more than the difference looked for, so the "
                "ratio is also given over the unmarked pairs.", "",
                "| job | metric | nvme-csi p50 | hand p50 | ratio, all pairs | ratio, unmarked pairs | pairs (nvme-csi / hand) |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for job in fio["jobs"]:
            name, metric = job["name"], job["metric"]
            pairs = fio_pairs(r, job)
            dv, hv = [x for x, _, _ in pairs], [y for _, y, _ in pairs]
            unit = "IOPS" if metric == "iops" else "MB/s"
            shown = "; ".join(f"{x:,.0f} / {y:,.0f}{' †' if bad else ''}" for x, y, bad in pairs)
            pr = percentile([x / y for x, y, _ in pairs if y], .5)
            pc = percentile([x / y for x, y, bad in pairs if y and not bad], .5)
            out.append(f"| {name} | {unit} | {percentile(dv, .5):,.0f} | {percentile(hv, .5):,.0f} | "
                       f"{'—' if pr != pr else f'{pr:.2f}×'} | {'—' if pc != pc else f'{pc:.2f}×'} | {shown} |")
        every = [x / y for job in fio["jobs"] for x, y, _ in fio_pairs(r, job) if y]
        if every:
            out += ["", f"The back-to-back pairs' ratios range from {min(every):.2f} to {max(every):.2f} "
                    f"(p10 {percentile(every, .1):.2f}, p90 {percentile(every, .9):.2f}) over all jobs. A median of "
                    f"{a['fio_rounds']} such pairs cannot tell 0.98× from 1.00× (the goal's margin) under emulation: "
                    "read these ratios as \"no difference larger than the noise\" at best, not as a measured overhead "
                    "or gain. A KVM host or many more rounds are needed for the goal's precision."]
        qd1 = [j["name"] for j in fio["jobs"] if j["iodepth"] == 1]
        if qd1:
            out += ["", "Queue depth 1, mean completion latency: " + "; ".join(
                f"{n} {percentile([x['clat_mean_us'] for x in fio['driver'][n]], .5):,.0f} µs (nvme-csi) vs "
                f"{percentile([x['clat_mean_us'] for x in fio['hand'][n]], .5):,.0f} µs (hand)" for n in qd1) + "."]
        s = fio.get("settings", {})
        if s:
            keys = sorted(set(s.get("driver", {})) | set(s.get("hand", {})))
            out += ["", "The connections as the kernel reports them (sysfs of the controller):", "",
                    "| attribute | nvme-csi | hand (`nvme connect` defaults) |", "| --- | --- | --- |"]
            for k in keys:
                out.append(f"| {k} | {s.get('driver', {}).get(k, '—')} | {s.get('hand', {}).get(k, '—')} |")
        out.append("")

    st, rss = r.get("startup"), r.get("rss")
    if st or rss:
        out += ["## 4. Footprint", ""]
    if rss:
        out += [f"Resident memory (VmRSS; RssAnon is the process's own heap and stacks, the rest mostly shared "
                f"library pages). The node plugin is `nvme-csi node` as its own process (the DaemonSet's); "
                f"{rss['volumes']} volumes ({a['rss_size_mib']} MiB, {rss['access']}) were created and published "
                "through the all-in-one, then staged through that node plugin.", "",
                "| process | state | VmRSS | RssAnon |", "| --- | --- | --- | --- |"]
        for proc, state, key in (("node", "idle", "node_idle"), ("node", f"{rss['volumes']} volumes staged", "node_staged"),
                                 ("node", "after unstaging them", "node_after_unstage"),
                                 ("all-in-one (controller + node)", "after sections 2 and 3, nothing staged",
                                  "all_in_one_idle"),
                                 ("all-in-one (controller + node)", f"{rss['volumes']} volumes published",
                                  "all_in_one_published")):
            v = rss.get(key)
            if v:
                out.append(f"| {proc} | {state} | {fmt_mib(v['VmRSS'])} | {fmt_mib(v['RssAnon'])} |")
        out += ["", f"Staging all {rss['volumes']} (create + publish + stage each, sequentially): "
                f"{rss['stage_all_s']:.1f} s.", ""]
    if st:
        out += ["Start to ready socket: from the process's start to its unix socket accepting a connection, "
                "and to the first GetPluginInfo answered (Python opens its channel after the socket "
                "accepts); and VmRSS one second after that.", "",
                "| role | socket p50 | p90 | first answer p50 | p90 | VmRSS idle p50 |", "| --- | --- | --- | --- | --- | --- |"]
        for role, v in st.items():
            out.append(f"| `nvme-csi {role}` | {fmt_ms(percentile(v['socket_ms'], .5))} | "
                       f"{fmt_ms(percentile(v['socket_ms'], .9))} | {fmt_ms(percentile(v['answer_ms'], .5))} | "
                       f"{fmt_ms(percentile(v['answer_ms'], .9))} | {fmt_mib(percentile(v['rss_idle_kib'], .5))} |")
        out += ["", f"Binary size: {m['binary_bytes'] / 1e6:.1f} MB ({m['build']} build).", ""]
    cp = r.get("control")
    if cp:
        real, sim = cp["sides"]
        out += ["## 1b. Control plane against the kernel's nvmet", "",
                f"Two `nvme-csi target`s with the same flags, each on its own XFS store (reflink), each behind its "
                f"own `nvme-csi controller` (`--log-level warning`, plaintext on loopback); one writes the kernel's "
                f"configfs (a namespace enabled opens its backing file; a publish links a host), the other a "
                f"directory, as `make bench` runs. Per side and round: {cp['ops_per_round']} volumes of 1 MiB "
                f"created, published, unpublished and deleted one at a time, then {cp['ops_per_round']} created by 16 "
                f"concurrent clients and deleted; {cp['rounds']} rounds, alternating which side goes first.", "",
                "| call | kernel nvmet p50 | p90 | simulated p50 | p90 | kernel / simulated |",
                "| --- | --- | --- | --- | --- | --- |"]
        for op, label in (("create", "CreateVolume"), ("publish", "ControllerPublishVolume"),
                          ("unpublish", "ControllerUnpublishVolume"), ("delete", "DeleteVolume")):
            a_, b_ = real["ops_ms"][op], sim["ops_ms"][op]
            out.append(f"| {label} | {fmt_ms(percentile(a_, .5))} | {fmt_ms(percentile(a_, .9))} | "
                       f"{fmt_ms(percentile(b_, .5))} | {fmt_ms(percentile(b_, .9))} | "
                       f"{ratio(percentile(a_, .5), percentile(b_, .5))} |")
        out += [f"| CreateVolume, 16 clients (per s, median of rounds) | "
                f"{percentile(real['create_16_per_s'], .5):.0f}/s | | {percentile(sim['create_16_per_s'], .5):.0f}/s | | "
                f"{percentile(real['create_16_per_s'], .5) / percentile(sim['create_16_per_s'], .5):.2f}× |", ""]
    rep = r.get("replication")
    if rep and rep["rounds"]:
        out += ["## 5. Replicated volumes (issue 11)", "",
                "Each round is one run of `nvme-csi-e2e --suite replication` (Tests/e2e/Lifecycle/Replication.swift) "
                "with this binary: three targets in the VM (the third for the repair of a lost leg), each with its "
                "own XFS store and NVMe/TCP portal, md RAID1 "
                "on the node with the leg defaults (fastIoFailTmo 2, ctrlLossTmo -1, reconnectDelay 1, "
                "keepAliveTmo 2), the node's mirror check every 1 s. Stall: how long a 4 KiB O_DIRECT+O_SYNC write "
                "issued when the target is killed -9 (its portal and subsystems removed, away 60 s) takes, while "
                "fio writes with checksums. Back in sync: from the target's restart until md reports both legs in sync (a "
                "bitmap resync of what was written meanwhile). Restored copy: a snapshot restored into a new "
                "mirror, from before its attach until md has copied the restored leg onto the blank one in full "
                "(so the rate is a lower bound).", "",
                "| round | stall | I/O errors | back in sync | restaged degraded, back in sync | restored copy | "
                "suite |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for n, x in enumerate(rep["rounds"], 1):
            get = lambda key: fmt_ms(x[key]) if key in x else "—"  # noqa: E731
            out.append(f"| {n} | {get('stall_ms')} | {x.get('errors', '—')} | {get('back_in_sync_ms')} | "
                       f"{get('restaged_in_sync_ms')} | {get('restored_copy_ms')} for {x.get('restored_mib', '?')} "
                       f"MiB | {x['suite_s']:.0f} s |")
        out.append("")
    if r.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in r["notes"]] + [""]
    if r.get("failures"):
        out += ["## Failures", ""] + [f"- {f}" for f in r["failures"]] + [""]
    return "\n".join(out)


def render(args: argparse.Namespace) -> None:
    console = Path(args.console).read_text(errors="replace")
    r = extract(console)
    acc = re.search(r"accel=(\w+)", console)
    r["accel"] = acc.group(1) if acc else "unknown"
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    r["host"] = {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release()}
    if args.host_load and Path(args.host_load).exists():
        samples = []
        for line in Path(args.host_load).read_text().splitlines():
            parts = line.split(" ", 2)
            if len(parts) >= 2:
                samples.append({"t": int(parts[0]), "load1": float(parts[1]), "top": parts[2] if len(parts) > 2 else ""})
        r["host"]["load_samples"] = samples
        if samples:
            loads = [x["load1"] for x in samples]
            seen = [p.rsplit(":", 1) for x in samples for p in x["top"].split(",") if ":" in p]
            busy = sorted({name for name, cpu in seen if name != "vms" and cpu.replace(".", "", 1).isdigit()
                           and float(cpu) >= 20 and not name.startswith(QUIET)})
            vms = max([int(m.group(1)) for x in samples if (m := re.search(r"vms:(\d+)", x["top"]))] or [1])
            if vms > 1:
                busy.append(f"{vms - 1} other VM(s) (qemu)")
            r["notes"].append(
                f"The host's 1-minute load average during the run (sampled every 10 s; the VM itself accounts for "
                f"about 2): median {percentile(loads, .5):.1f}, max {max(loads):.1f}. Other processes among the "
                f"busiest, at ≥ 20% of a core (ps): {', '.join(busy) or 'none'}.")
    a = r["method"]["args"]
    reduced = any(a.get(k, v) < v for k, v in DEFAULTS.items()) or a.get("phases") != DEFAULT_PHASES
    date = datetime.date.today().isoformat()
    labels = ["vm"] + ([r["method"]["build"]] if r["method"]["build"] != "release" else []) + (
        ["reduced"] if reduced else []) + ([args.label] if args.label else [])
    stem = f"{date}-{'-'.join(labels)}"
    title = f"make bench-vm: {date}, {r['method']['build']} build, accel={r['accel']}" + (
        " (reduced rounds: not reference figures)" if reduced else "")
    if args.label:
        r["trial"] = f"Labelled run: {args.label}."
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(r, indent=1, sort_keys=True) + "\n")
    (out / f"{stem}.md").write_text(render_md(r, title))
    print(f"bench-vm: wrote {out / stem}.md and .json")


DEFAULT_PHASES = "startup,attach,fio,rss,control,replication"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("measure", help="inside the VM: run the bench, print the results on the console")
    m.add_argument("--bin", required=True)
    m.add_argument("--build", default="unknown")
    m.add_argument("--binary-sha256", default="", help="(run.sh) the first hex digits of the binary's SHA-256")
    m.add_argument("--commit", default="", help="(run.sh) the repository's HEAD at run time")
    m.add_argument("--work", required=True, help="a scratch directory on tmpfs")
    m.add_argument("--rounds", type=int, default=DEFAULTS["rounds"], help="attach rounds (default %(default)s)")
    m.add_argument("--fio-rounds", type=int, default=DEFAULTS["fio_rounds"])
    m.add_argument("--fio-runtime", type=int, default=DEFAULTS["fio_runtime"], help="seconds per fio job")
    m.add_argument("--fio-ramp", type=int, default=1)
    m.add_argument("--fio-size-mib", type=int, default=256)
    m.add_argument("--attach-size-mib", type=int, default=256)
    m.add_argument("--rss-volumes", type=int, default=DEFAULTS["rss_volumes"])
    m.add_argument("--rss-size-mib", type=int, default=64)
    m.add_argument("--rss-block", action="store_true", help="stage the RSS volumes as block volumes (no mkfs)")
    m.add_argument("--startup-rounds", type=int, default=DEFAULTS["startup_rounds"])
    m.add_argument("--no-ktrace", dest="ktrace", action="store_false",
                   help="no kernel trace (ftrace) of the attach rounds, so no breakdown of where the time goes")
    m.add_argument("--phases", default=DEFAULT_PHASES)
    m.add_argument("--e2e", default="", help="the nvme-csi-e2e harness (default: next to --bin)")
    m.add_argument("--replication-rounds", type=int, default=DEFAULTS["replication_rounds"],
                   help="runs of the replication suite (default %(default)s)")
    m.add_argument("--control-rounds", type=int, default=DEFAULTS["control_rounds"],
                   help="control-plane rounds, real configfs against simulated (default %(default)s)")
    m.add_argument("--control-ops", type=int, default=DEFAULTS["control_ops"],
                   help="volumes created, published, unpublished and deleted per side and round")
    r = sub.add_parser("render", help="on the host: results from the console log into bench/results")
    r.add_argument("--console", required=True)
    r.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    r.add_argument("--label", default="", help="a label for the file names (e.g. trial)")
    r.add_argument("--host-load", default="", help="(run.sh) the host's load, sampled during the run")
    args = p.parse_args()
    if args.mode == "render":
        render(args)
        return 0
    sys.path.insert(0, str(STUBS))
    with contextlib.ExitStack() as stack:
        bench = Bench(args, stack)
        try:
            bench.main()
            status = 0
        except Exception as e:
            traceback.print_exc()
            bench.result["failures"].append(f"{type(e).__name__}: {e}")
            for p_ in (bench.plugin, bench.target):
                if p_ is not None:
                    print(f"--- {p_.role} log (tail)\n{p_.tail(40)}", flush=True)
            status = 1
    blob = base64.b64encode(zlib.compress(json.dumps(bench.result).encode(), 9)).decode()
    print(MARK_BEGIN)
    for i in range(0, len(blob), 76):
        print(MARK_LINE + blob[i:i + 76])
    print(MARK_END, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
