#!/usr/bin/env python3
"""make bench, parts 1 and 4 (local): the control plane over its real sockets, and the
footprint of the controller and target processes.

A target (file store on a loop-mounted XFS with reflink, nvmet simulated in a
directory) and a controller run as real processes; a Python grpcio client speaks CSI to
the controller's unix socket. Each figure is the median of --repeats runs. Writes
bench/results/<date>.md and its JSON twin. See bench/README.md.

Run through bench/run.sh (it makes the venv); `make bench` builds the release binary
and passes it with --bin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_DIR = REPO / ".build" / "bench"
MiB = 1 << 20
NODE_UUID = "0f8e1c2a-1111-4222-8333-000000000001"
# A node ID as `nvme-csi node` reports it: n1.<host-id>.<host-nqn> (docs/architecture.md).
NODE_ID = f"n1.{NODE_UUID}.nqn.2014-08.org.nvmexpress:uuid:{NODE_UUID}"
TARGET_NAME = "bench"
SECOND_TARGET_NAME = "bench-2"
TARGET_SERVER_NAME = "nvme-csi-target"  # what deploy/certs/make-certs.sh puts in the target's certificate

DEFAULTS = dict(repeats=3, ops=200, clients=16, scale=1000, list_volumes=10000, probes=1000)


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------
# Stubs, generated at bench time from proto/ (never committed)


def generate_stubs() -> None:
    import grpc_tools
    from grpc_tools import protoc

    out = BUILD_DIR / "stubs"
    protos = ["csi.proto", "nvmecsi/target/v1/target.proto"]
    digest = hashlib.sha256()
    digest.update(grpc_tools.__file__.encode())
    for p in protos:
        digest.update((REPO / "proto" / p).read_bytes())
    stamp = out / ".stamp"
    if not (stamp.exists() and stamp.read_text() == digest.hexdigest()):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        include = Path(grpc_tools.__file__).parent / "_proto"
        for p in protos:
            rc = protoc.main(
                ["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
                 str(REPO / "proto" / p)])
            if rc != 0:
                raise BenchError(f"grpc_tools.protoc failed on proto/{p} (exit {rc})")
        stamp.write_text(digest.hexdigest())
    sys.path.insert(0, str(out))


# ---------------------------------------------------------------------------
# Small helpers


def run(argv: list[str], check: bool = True) -> str:
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and p.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed (exit {p.returncode}): {p.stdout.strip()}")
    return p.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    f, c = math.floor(k), math.ceil(k)
    if f == c:
        return sorted_values[f]
    return sorted_values[f] + (sorted_values[c] - sorted_values[f]) * (k - f)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem (kB) from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}/s" if v >= 100 else f"{v:,.1f}/s"


def fmt_ms(v: float) -> str:
    if v != v:  # nan
        return "—"
    if v >= 100:
        return f"{v:,.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    return f"{v:.2f} ms"


def fmt_mb(kib: float) -> str:
    """/proc's kB are KiB; MB here are 10^6 bytes."""
    return f"{kib * 1024 / 1e6:.1f} MB"


def count_label(n: int) -> str:
    return f"{n:,}"


# ---------------------------------------------------------------------------
# Processes


class Proc:
    """One nvme-csi process we started (only these are ever signalled)."""

    def __init__(self, role: str, argv: list[str], log_path: Path):
        self.role = role
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.log.write(f"\n=== {' '.join(argv)}\n".encode())
        self.log.flush()
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        self.pid = self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.role} exited with {self.popen.returncode}; its log ({self.log_path}):\n"
                             + self.tail())

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()

    def memory(self) -> dict[str, int]:
        return proc_status(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)


# ---------------------------------------------------------------------------
# The bench


class Bench:
    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack):
        self.args = args
        self.stack = stack
        self.bin = Path(args.bin).resolve()
        self.build = args.build or self.infer_build()
        self.work = Path(tempfile.mkdtemp(prefix="run-", dir=BUILD_DIR))
        stack.callback(self.remove_work)
        self.method: dict[str, object] = {}
        self.notes: list[str] = []
        self.figures: dict[str, dict] = {}  # id -> {label, kind, unit, repeats: [...]}
        self.breakdown: dict[str, dict] = {}  # op -> server-side time and CPU per call (sequential, per repeat)
        self.failures: list[str] = []
        self.target: Proc | None = None
        self.store_device: str | None = None  # the loop device under the store, for its flush count
        self.second_target: Proc | None = None  # the two-target stage's
        self.second_target_port = 0
        self.controller: Proc | None = None
        self.target_port = free_port()
        self.target_metrics = free_port()
        self.controller_metrics = free_port()
        self.socket_path = self.work / "csi.sock"
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.volume_size = args.volume_size_mib * MiB
        self.present = 0  # volumes the filler created and that stay

    def infer_build(self) -> str:
        parts = str(self.bin).split(os.sep)
        for kind in ("release", "debug"):
            if kind in parts:
                return kind
        return "unknown"

    def remove_work(self) -> None:
        # The processes' logs of the last run stay in .build/bench/logs-last.
        last = BUILD_DIR / "logs-last"
        shutil.rmtree(last, ignore_errors=True)
        with contextlib.suppress(OSError):
            shutil.copytree(getattr(self, "logs", None) or "/nonexistent", last)
        if self.args.keep:
            log(f"kept {self.work}")
            return
        shutil.rmtree(self.work, ignore_errors=True)

    # -- setup --------------------------------------------------------------

    def setup_store(self) -> None:
        a = self.args
        self.method["store_requested"] = "xfs-loop" if not a.store_dir else f"directory {a.store_dir}"
        wanted_volumes = a.list_volumes + (a.large_volumes if a.large else 0) + 4 * a.ops + 100
        if a.store_dir:
            base = Path(a.store_dir).resolve()
            base.mkdir(parents=True, exist_ok=True)
            self.store = Path(tempfile.mkdtemp(prefix="bench-store-", dir=base))
            self.stack.callback(shutil.rmtree, self.store, True)
            self.notes.append(f"The store is a directory on the current file system ({self.store}), as asked with "
                              "--store-dir: no loop-mounted XFS.")
        else:
            reason = None
            if os.geteuid() != 0:
                reason = "not running as root (a loop device and mount need root)"
            elif not (shutil.which("losetup") and shutil.which("mkfs.xfs")):
                reason = "losetup or mkfs.xfs missing (Debian: apt-get install util-linux xfsprogs)"
            if reason is None:
                try:
                    self.setup_xfs(wanted_volumes)
                except BenchError as e:
                    reason = str(e)
            if reason is not None:
                if a.require_xfs:
                    raise BenchError(f"cannot set up the XFS store: {reason}")
                self.store = self.work / "store"
                self.store.mkdir()
                fs = run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(self.store)], check=False)
                self.notes.append(f"FALLBACK: the XFS store could not be set up ({reason}); the store is a directory "
                                  f"on the current file system ({fs or 'unknown'}): reflink only if that file system "
                                  "has it. Figures are not comparable with an XFS run.")
                log(f"WARNING: no XFS store ({reason}); using {self.store}")
        self.method["store_path"] = str(self.store)
        self.method["store_fs"] = run(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "--target", str(self.store)],
                                      check=False)
        # nvmet simulated in a directory. On tmpfs when possible: real configfs is in
        # memory too (its writes and fsyncs cost no disk I/O).
        self.configfs = self.work / "configfs"
        self.configfs.mkdir()
        if os.geteuid() == 0 and not a.configfs_on_disk:
            try:
                # About 12 pages (attribute files) per exported volume, and room to spare.
                size_mib = max(1024, wanted_volumes * 80 // 1024 + 256)
                run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "bench-configfs",
                     str(self.configfs)])
                self.stack.callback(self.unmount, self.configfs)
                self.method["configfs"] = "simulated nvmet: a plain directory on a tmpfs mount"
            except BenchError as e:
                self.method["configfs"] = f"simulated nvmet: a plain directory on the work file system (tmpfs: {e})"
        else:
            self.method["configfs"] = "simulated nvmet: a plain directory on the work file system"

    def setup_xfs(self, volumes: int) -> None:
        # Sized for the volumes the run creates (no overcommit), sparse.
        gib = max(8, math.ceil(volumes * self.volume_size * 1.25 / (1 << 30)) + 4)
        image = self.work / "xfs.img"
        with open(image, "wb") as f:
            f.truncate(gib << 30)
        dev = run(["losetup", "--find", "--show", str(image)])
        self.stack.callback(lambda: run(["losetup", "-d", dev], check=False))
        self.store_device = Path(dev).name
        run(["mkfs.xfs", "-q", "-m", "reflink=1", dev])
        mnt = self.work / "xfs"
        mnt.mkdir()
        run(["mount", dev, str(mnt)])
        self.stack.callback(self.unmount, mnt)
        self.store = mnt / "store"
        self.store.mkdir()
        self.method["store"] = (f"file store on XFS (mkfs.xfs -m reflink=1) on {dev}, a sparse {gib} GiB image "
                                f"file in {self.work} (on {self.host_fs(self.work)})")

    @staticmethod
    def host_fs(path: Path) -> str:
        return run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "--target", str(path)], check=False).replace(" ", ", ")

    @staticmethod
    def unmount(path: Path) -> None:
        for _ in range(20):
            if subprocess.run(["umount", str(path)], stderr=subprocess.DEVNULL).returncode == 0:
                return
            time.sleep(0.25)
        subprocess.run(["umount", "-l", str(path)], stderr=subprocess.DEVNULL)

    def setup_tls(self) -> None:
        if self.args.plaintext:
            self.method["target_api"] = "plaintext on loopback TCP (--insecure-plaintext)"
            return
        certs = self.work / "certs"
        run([str(REPO / "deploy/certs/make-certs.sh"), str(certs)])
        self.certs = certs
        self.method["target_api"] = "mutual TLS on loopback TCP (deploy/certs/make-certs.sh), as deployed"

    def tls_args(self, identity: str) -> list[str]:
        if self.args.plaintext:
            return ["--insecure-plaintext"]
        d = self.certs / identity
        return ["--tls-ca", str(d / "ca.crt"), "--tls-cert", str(d / "tls.crt"), "--tls-key", str(d / "tls.key")]

    # -- processes ----------------------------------------------------------

    def start_target(self) -> Proc:
        argv = [str(self.bin), "target", "--listen", f"127.0.0.1:{self.target_port}", "--store", f"file:{self.store}",
                "--configfs", str(self.configfs), "--portal", "127.0.0.1:4420", "--name", TARGET_NAME,
                "--metrics-address", f"127.0.0.1:{self.target_metrics}", "--log-level", self.args.log_level,
                *self.tls_args("target")]
        self.target = Proc("target", argv, self.logs / "target.log")
        return self.target

    def start_second_target(self) -> Proc:
        """Another target on the same machine, its store beside the first on the same file
        system, its simulated configfs apart."""
        store = Path(tempfile.mkdtemp(prefix="store-second-", dir=self.store.parent))
        self.stack.callback(shutil.rmtree, store, True)
        configfs = self.work / "configfs-second"
        configfs.mkdir(exist_ok=True)
        self.second_target_port = free_port()
        argv = [str(self.bin), "target", "--listen", f"127.0.0.1:{self.second_target_port}", "--store",
                f"file:{store}", "--configfs", str(configfs), "--portal", "127.0.0.1:4421", "--name",
                SECOND_TARGET_NAME, "--log-level", self.args.log_level, *self.tls_args("target")]
        self.second_target = Proc("target-2", argv, self.logs / "target-2.log")
        return self.second_target

    def start_controller(self) -> Proc:
        targets = self.work / "targets.json"
        listed = [{"name": TARGET_NAME, "address": f"127.0.0.1:{self.target_port}"}]
        if self.second_target is not None:
            listed.append({"name": SECOND_TARGET_NAME, "address": f"127.0.0.1:{self.second_target_port}"})
        targets.write_text(json.dumps({"targets": listed}))
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        argv = [str(self.bin), "controller", "--endpoint", f"unix://{self.socket_path}", "--targets", str(targets),
                "--metrics-address", f"127.0.0.1:{self.controller_metrics}", "--log-level", self.args.log_level,
                *self.tls_args("controller")]
        self.controller = Proc("controller", argv, self.logs / "controller.log")
        return self.controller

    def stop_all(self) -> None:
        for p in (self.controller, self.target, self.second_target):
            if p is not None:
                p.stop()

    # -- channels -----------------------------------------------------------

    def csi_channel(self):
        import grpc
        return grpc.aio.insecure_channel(f"unix://{self.socket_path}", options=[
            ("grpc.max_receive_message_length", 512 * MiB),
            ("grpc.use_local_subchannel_pool", 1),  # every client its own connection
        ])

    def target_channel(self, port: int | None = None):
        import grpc
        address = f"127.0.0.1:{port or self.target_port}"
        options = [("grpc.enable_http_proxy", 0), ("grpc.use_local_subchannel_pool", 1),
                   ("grpc.max_receive_message_length", 512 * MiB)]
        if self.args.plaintext:
            return grpc.aio.insecure_channel(address, options=options)
        d = self.certs / "reader"  # GetInfo needs only the reader's rights
        creds = grpc.ssl_channel_credentials(root_certificates=(d / "ca.crt").read_bytes(),
                                             private_key=(d / "tls.key").read_bytes(),
                                             certificate_chain=(d / "tls.crt").read_bytes())
        return grpc.aio.secure_channel(address, creds,
                                       options=options + [("grpc.ssl_target_name_override", TARGET_SERVER_NAME)])

    async def open_clients(self) -> None:
        import csi_pb2_grpc
        from nvmecsi.target.v1 import target_pb2_grpc
        await self.close_clients()
        self.channels = [self.csi_channel() for _ in range(max(1, self.args.clients))]
        self.ctrl = [csi_pb2_grpc.ControllerStub(c) for c in self.channels]
        self.ident = csi_pb2_grpc.IdentityStub(self.channels[0])
        self.tchannel = self.target_channel()
        self.tstub = target_pb2_grpc.TargetStub(self.tchannel)

    async def close_clients(self) -> None:
        for c in getattr(self, "channels", []):
            await c.close()
        if getattr(self, "tchannel", None) is not None:
            await self.tchannel.close()
        self.channels = []
        self.tchannel = None

    # -- readiness ----------------------------------------------------------

    async def wait_target(self, proc: Proc, timeout: float, port: int | None = None) -> tuple[float, float]:
        """Seconds from the process start to a listening socket, and to a first GetInfo answer."""
        import grpc
        from nvmecsi.target.v1 import target_pb2, target_pb2_grpc
        deadline = time.perf_counter() + timeout
        port = port or self.target_port
        while True:
            proc.check_alive()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                pass
            if time.perf_counter() > deadline:
                raise BenchError(f"target did not listen within {timeout:.0f} s; log:\n{proc.tail()}")
            await asyncio.sleep(0.001)
        listening = time.perf_counter() - proc.started
        channel = self.target_channel(port)
        try:
            stub = target_pb2_grpc.TargetStub(channel)
            while True:
                proc.check_alive()
                try:
                    await stub.GetInfo(target_pb2.GetInfoRequest(), timeout=max(1.0, deadline - time.perf_counter()))
                    break
                except grpc.aio.AioRpcError as e:
                    if time.perf_counter() > deadline:
                        raise BenchError(f"target did not answer GetInfo within {timeout:.0f} s: {e.code()} "
                                         f"{e.details()}")
                    await asyncio.sleep(0.001)
        finally:
            await channel.close()
        return listening, time.perf_counter() - proc.started

    async def wait_controller(self, proc: Proc, timeout: float) -> tuple[float, float, float]:
        """Seconds from the process start to the socket accepting, to a first
        GetPluginInfo answer, and to Probe ready=true (it reaches the target)."""
        import grpc
        import csi_pb2
        import csi_pb2_grpc
        deadline = time.perf_counter() + timeout
        while True:
            proc.check_alive()
            try:
                s = socket.socket(socket.AF_UNIX)
                try:
                    s.connect(str(self.socket_path))
                finally:
                    s.close()
                break
            except OSError:
                pass
            if time.perf_counter() > deadline:
                raise BenchError(f"controller socket did not appear within {timeout:.0f} s; log:\n{proc.tail()}")
            await asyncio.sleep(0.001)
        listening = time.perf_counter() - proc.started
        channel = self.csi_channel()
        try:
            stub = csi_pb2_grpc.IdentityStub(channel)
            answered = None
            while True:
                proc.check_alive()
                try:
                    if answered is None:
                        await stub.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=5)
                        answered = time.perf_counter() - proc.started
                    r = await stub.Probe(csi_pb2.ProbeRequest(), timeout=5)
                    if r.ready.value:
                        break
                except grpc.aio.AioRpcError as e:
                    if time.perf_counter() > deadline:
                        raise BenchError(f"controller not ready within {timeout:.0f} s: {e.code()} {e.details()}")
                if time.perf_counter() > deadline:
                    raise BenchError(f"controller Probe not ready within {timeout:.0f} s")
                await asyncio.sleep(0.001)
        finally:
            await channel.close()
        return listening, answered, time.perf_counter() - proc.started

    # -- figures ------------------------------------------------------------

    def record(self, fid: str, label: str, kind: str, value: dict, unit: str = "") -> None:
        f = self.figures.setdefault(fid, {"label": label, "kind": kind, "unit": unit, "repeats": []})
        f["repeats"].append(value)

    def scrape(self, after: bool = False) -> dict[str, dict[str, tuple[float, float]]]:
        """(count, seconds) of every RPC method served, per process. A scrape of the
        controller asks the target for GetInfo: before a batch the controller is read
        first, after it last, so those calls fall outside the batch's difference."""
        out = {}
        order = [("controller", self.controller_metrics), ("target", self.target_metrics)]
        for role, port in (reversed(order) if after else order):
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            except OSError:
                out[role] = {}
                continue
            methods: dict[str, list[float]] = {}
            for line in text.splitlines():
                m = re.match(r'^nvmecsi_rpc_duration_seconds_(sum|count)\{([^}]*)\}\s+(\S+)', line)
                if not m:
                    continue
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
                entry = methods.setdefault(labels.get("method", "?"), [0.0, 0.0])
                entry[0 if m.group(1) == "count" else 1] += float(m.group(3))
            out[role] = {k: (v[0], v[1]) for k, v in methods.items()}
        return out

    async def batch(self, fid: str, label: str, n: int, clients: int, call, detail: str | None = None) -> list:
        """Runs call(client, i) for i in 0..n-1 on `clients` concurrent clients; records
        throughput and latency; returns the answers (None where a call failed)."""
        import grpc
        results: list = [None] * n
        latencies: list[float] = []
        errors: list[str] = []
        next_i = 0

        async def worker(w: int) -> None:
            nonlocal next_i
            while next_i < n:
                i = next_i
                next_i += 1
                t0 = time.perf_counter()
                try:
                    results[i] = await call(w, i)
                    latencies.append(time.perf_counter() - t0)
                except grpc.aio.AioRpcError as e:
                    errors.append(f"{e.code().name}: {e.details()}")

        before = self.scrape() if detail else None
        flushes0 = self.device_flushes()
        cpu0 = (self.controller.cpu(), self.targets_cpu(), own_cpu_seconds())
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        wall = time.perf_counter() - t0
        cpu1 = (self.controller.cpu(), self.targets_cpu(), own_cpu_seconds())
        flushes1 = self.device_flushes()
        after = self.scrape(after=True) if detail else None
        latencies.sort()
        ok = len(latencies)
        value = {"ops": n, "ok": ok, "errors": len(errors), "clients": clients, "wall_s": round(wall, 4),
                 "per_s": ok / wall if wall > 0 else 0.0, "p50_ms": percentile(latencies, 0.5) * 1000,
                 "p99_ms": percentile(latencies, 0.99) * 1000,
                 "mean_ms": (sum(latencies) / ok * 1000) if ok else float("nan"),
                 "cpu_ms_per_op": {"controller": (cpu1[0] - cpu0[0]) * 1000 / n, "target": (cpu1[1] - cpu0[1]) * 1000 / n,
                                   "client": (cpu1[2] - cpu0[2]) * 1000 / n}}
        if flushes0 is not None and flushes1 is not None:
            value["device_flushes_per_op"] = (flushes1 - flushes0) / n
        if errors:
            value["first_error"] = errors[0]
            self.failures.append(f"{label}: {len(errors)} of {n} calls failed, first: {errors[0]}")
            log(f"  {label}: {len(errors)} of {n} FAILED, first: {errors[0]}")
        if detail:
            server = {}
            for role in ("controller", "target"):
                for method, (count, secs) in after.get(role, {}).items():
                    c0, s0 = before.get(role, {}).get(method, (0.0, 0.0))
                    if count - c0 > 0:
                        server[f"{role} {method}"] = {"calls_per_op": (count - c0) / n,
                                                      "mean_ms": (secs - s0) / (count - c0) * 1000}
            value["server"] = server
            self.breakdown.setdefault(detail, []).append({"cpu_ms_per_op": value["cpu_ms_per_op"], "server": server,
                                                          "client_p50_ms": value["p50_ms"],
                                                          "device_flushes_per_op": value.get("device_flushes_per_op")})
        self.record(fid, label, "rate", value)
        log(f"  {label}: {fmt_rate(value['per_s'])}, p50 {fmt_ms(value['p50_ms'])}, p99 {fmt_ms(value['p99_ms'])}"
            f" ({ok} ops, {wall:.2f} s)")
        return results

    def device_flushes(self) -> int | None:
        """Flush requests the store's loop device has completed (field 16 of its stat):
        what durability costs the disk, free of the timing noise. None without one."""
        if not self.store_device:
            return None
        try:
            fields = (Path("/sys/block") / self.store_device / "stat").read_text().split()
            return int(fields[15]) if len(fields) > 15 else None
        except OSError:
            return None

    def targets_cpu(self) -> float:
        return self.target.cpu() + (self.second_target.cpu() if self.second_target is not None else 0.0)

    # -- requests -----------------------------------------------------------

    def cap(self):
        import csi_pb2
        return csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"),
                                        access_mode=csi_pb2.VolumeCapability.AccessMode(
                                            mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))

    def create_request(self, name: str, snapshot: str | None = None, volume: str | None = None):
        import csi_pb2
        req = csi_pb2.CreateVolumeRequest(name=name, capacity_range=csi_pb2.CapacityRange(
            required_bytes=self.volume_size), volume_capabilities=[self.cap()])
        if snapshot:
            req.volume_content_source.snapshot.snapshot_id = snapshot
        if volume:
            req.volume_content_source.volume.volume_id = volume
        return req

    def create_call(self, names: list[str], sources: list[str] | None = None, kind: str | None = None):
        async def call(w: int, i: int):
            src = sources[i] if sources else None
            req = self.create_request(names[i], snapshot=src if kind == "snapshot" else None,
                                      volume=src if kind == "volume" else None)
            return (await self.ctrl[w].CreateVolume(req, timeout=120)).volume.volume_id
        return call

    def delete_call(self, ids: list[str | None]):
        import csi_pb2

        async def call(w: int, i: int):
            if ids[i]:
                await self.ctrl[w].DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=ids[i]), timeout=120)
            return True
        return call

    # -- phases -------------------------------------------------------------

    async def startup_empty(self) -> None:
        a = self.args
        log("start-up with an empty store")
        for r in range(a.repeats):
            proc = self.start_target()
            listening, answered = await self.wait_target(proc, 120)
            self.record("target_start_empty", "target: start to listening / to first answer (no volumes)", "startup",
                        {"listening_ms": listening * 1000, "answer_ms": answered * 1000})
            log(f"  target: listening {listening * 1000:.0f} ms, first GetInfo {answered * 1000:.0f} ms")
            if r < a.repeats - 1:
                proc.stop()
        for r in range(a.repeats):
            proc = self.start_controller()
            listening, answered, ready = await self.wait_controller(proc, 120)
            self.record("controller_start", "controller: start to socket / GetPluginInfo / Probe ready", "startup",
                        {"listening_ms": listening * 1000, "answer_ms": answered * 1000, "ready_ms": ready * 1000})
            log(f"  controller: socket {listening * 1000:.0f} ms, GetPluginInfo {answered * 1000:.0f} ms, "
                f"Probe ready {ready * 1000:.0f} ms")
            if r < a.repeats - 1:
                proc.stop()
        await self.open_clients()

    async def memory(self, fid: str, label: str) -> None:
        await asyncio.sleep(self.args.settle)
        for role, proc in (("controller", self.controller), ("target", self.target)):
            m = proc.memory()
            self.record(f"{role}_rss_{fid}", f"{role} RSS {label}", "memory", m)
            log(f"  {role} RSS {label}: {fmt_mb(m['VmRSS'])} (anon {fmt_mb(m['RssAnon'])}, "
                f"file {fmt_mb(m['RssFile'])})")

    async def round_trips(self) -> None:
        import grpc
        import csi_pb2
        from nvmecsi.target.v1 import target_pb2
        a = self.args
        log(f"round trips ({a.probes} calls each)")
        calls = {
            "probe": ("Probe (client → controller → target GetInfo)", lambda: self.ident.Probe(csi_pb2.ProbeRequest())),
            "plugin_info": ("GetPluginInfo (client → controller only)",
                            lambda: self.ident.GetPluginInfo(csi_pb2.GetPluginInfoRequest())),
            "target_getinfo": ("target GetInfo, direct (client → target over the target API)",
                               lambda: self.tstub.GetInfo(target_pb2.GetInfoRequest())),
        }
        for fid, (label, make) in calls.items():
            for _ in range(20):
                await make()
            latencies = []
            for _ in range(a.probes):
                t0 = time.perf_counter()
                await make()
                latencies.append(time.perf_counter() - t0)
            latencies.sort()
            v = {"calls": a.probes, "p50_ms": percentile(latencies, 0.5) * 1000,
                 "p99_ms": percentile(latencies, 0.99) * 1000}
            self.record(fid, label, "latency", v)
            log(f"  {label}: p50 {fmt_ms(v['p50_ms'])}, p99 {fmt_ms(v['p99_ms'])}")

    def disk_floors(self) -> None:
        """What durability costs on the store's file system with nothing else in the way
        (no RPC, no process of ours): a record's commit as the target makes it (temp
        file, fsync, rename, fsync of the directory) and one fdatasync'd append (a
        journal's commit). The floor under every durable create."""
        directory = self.store.parent / "disk-floors"
        directory.mkdir(exist_ok=True)
        record = b"x" * 600  # about a volume record's size
        n = self.args.probes
        log(f"disk floors ({n} commits each, in {directory})")
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        jfd = os.open(directory / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            def commit(i: int) -> None:
                temp, final = directory / f".r{i}.json.tmp", directory / f"r{i}.json"
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, record)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(temp, final)
                os.fsync(dfd)

            def append(_: int) -> None:
                os.write(jfd, record + b"\n")
                os.fdatasync(jfd)

            for fid, label, step in (
                    ("disk_record_commit", "a record commit alone on the store's file system "
                                           "(temp, fsync, rename, fsync dir)", commit),
                    ("disk_append", "an fdatasync'd append alone on the store's file system", append)):
                latencies = []
                flushes0 = self.device_flushes()
                for i in range(n):
                    t0 = time.perf_counter()
                    step(i)
                    latencies.append(time.perf_counter() - t0)
                flushes1 = self.device_flushes()
                latencies.sort()
                v = {"calls": n, "p50_ms": percentile(latencies, 0.5) * 1000,
                     "p99_ms": percentile(latencies, 0.99) * 1000}
                if flushes0 is not None and flushes1 is not None:
                    v["device_flushes_per_op"] = (flushes1 - flushes0) / n
                self.record(fid, label, "latency", v)
                log(f"  {label}: p50 {fmt_ms(v['p50_ms'])}, p99 {fmt_ms(v['p99_ms'])}")
        finally:
            os.close(jfd)
            os.close(dfd)
            shutil.rmtree(directory, ignore_errors=True)

    def fill_data(self, volume_ids: list[str]) -> None:
        """Writes --data-kib of data into each volume's file, so that snapshots and
        clones copy (reflink) real extents, not only a hole."""
        if self.args.data_kib <= 0:
            return
        data = os.urandom(self.args.data_kib * 1024)
        for vid in volume_ids:
            if not vid:
                continue
            path = self.store / "volumes" / (vid.rsplit(".", 1)[1] + ".img")
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, data, 0)
            finally:
                os.close(fd)
        os.sync()

    async def lifecycle(self, r: int) -> None:
        """Create, publish, unpublish, snapshot, restore, clone, delete: K of each,
        sequentially, then with --clients concurrent clients."""
        import csi_pb2
        a = self.args
        k = a.ops
        modes = [("seq", 1, "sequential")]
        if a.clients > 1:
            modes.append(("conc", a.clients, f"{a.clients} clients"))
        for mode, clients, mode_label in modes:
            log(f"lifecycle, repeat {r + 1}/{a.repeats}, {mode_label}, {k} of each")
            detail = (lambda op: op) if mode == "seq" else (lambda op: None)
            tag = f"r{r}-{mode}"
            names = [f"bench-{tag}-vol-{i}" for i in range(k)]
            vols = await self.batch(f"create_{mode}", f"CreateVolume, {mode_label}", k, clients,
                                    self.create_call(names), detail=detail("CreateVolume"))

            async def publish(w: int, i: int):
                if vols[i]:
                    await self.ctrl[w].ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
                        volume_id=vols[i], node_id=NODE_ID, volume_capability=self.cap()), timeout=120)

            async def unpublish(w: int, i: int):
                if vols[i]:
                    await self.ctrl[w].ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
                        volume_id=vols[i], node_id=NODE_ID), timeout=120)

            await self.batch(f"publish_{mode}", f"ControllerPublishVolume, {mode_label}", k, clients, publish,
                             detail=detail("ControllerPublishVolume"))
            await self.batch(f"unpublish_{mode}", f"ControllerUnpublishVolume, {mode_label}", k, clients, unpublish,
                             detail=detail("ControllerUnpublishVolume"))
            self.fill_data(vols)

            async def snapshot(w: int, i: int):
                if vols[i]:
                    resp = await self.ctrl[w].CreateSnapshot(csi_pb2.CreateSnapshotRequest(
                        source_volume_id=vols[i], name=f"bench-{tag}-snap-{i}"), timeout=120)
                    return resp.snapshot.snapshot_id

            snaps = await self.batch(f"snapshot_{mode}", f"CreateSnapshot, {mode_label}", k, clients, snapshot,
                                     detail=detail("CreateSnapshot"))
            restored = await self.batch(f"restore_{mode}", f"CreateVolume from a snapshot (restore), {mode_label}",
                                        k, clients, self.create_call([f"bench-{tag}-restored-{i}" for i in range(k)],
                                                                     snaps, "snapshot"),
                                        detail=detail("CreateVolume from a snapshot"))
            clones = await self.batch(f"clone_{mode}", f"CreateVolume from a volume (clone), {mode_label}", k,
                                      clients, self.create_call([f"bench-{tag}-clone-{i}" for i in range(k)], vols,
                                                                "volume"),
                                      detail=detail("CreateVolume from a volume"))
            await self.batch(f"delete_{mode}", f"DeleteVolume, {mode_label}", k, clients, self.delete_call(vols),
                             detail=detail("DeleteVolume"))

            async def delete_snapshot(w: int, i: int):
                if snaps[i]:
                    await self.ctrl[w].DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snaps[i]),
                                                      timeout=120)

            await self.batch(f"delete_snapshot_{mode}", f"DeleteSnapshot, {mode_label}", k, clients, delete_snapshot,
                             detail=detail("DeleteSnapshot"))
            # Clean up the restores and clones (timed, reported in the JSON only).
            await self.batch(f"delete_copies_{mode}", f"DeleteVolume of restores and clones, {mode_label}", 2 * k,
                             clients, self.delete_call(restored + clones))

    async def fill(self, count: int, how: str) -> None:
        """Brings the volumes present to `count` (they stay to the end)."""
        need = count - self.present
        if need <= 0:
            return
        if how == "records":
            self.write_records(need)
            return
        log(f"filling to {count:,} volumes through the API ({need:,} CreateVolume, {self.args.clients} clients)")
        names = [f"bench-fill-{self.present + i:06d}" for i in range(need)]
        await self.batch(f"fill_to_{count}", f"CreateVolume, {self.args.clients} clients, filling "
                         f"{self.present:,} → {count:,} volumes", need, max(1, self.args.clients),
                         self.create_call(names))
        self.present = count

    def write_records(self, need: int) -> None:
        """Writes volume records and sparse data files straight into the stopped
        target's store, in the layout FileStore documents (volumes/<uuid>.json and
        <uuid>.img; docs/architecture.md), each record a copy of one the API wrote,
        with its own uuid, name and creation time."""
        if self.target and self.target.popen.poll() is None:
            raise BenchError("records are written only while the target is stopped")
        volumes = self.store / "volumes"
        template = None
        for p in sorted(volumes.glob("*.json")):
            rec = json.loads(p.read_text())
            if rec.get("name", "").startswith("bench-fill-"):
                template = rec
                break
        if template is None:
            raise BenchError("no API-written volume record to copy (fill through the API first)")
        log(f"writing {need:,} volume records directly into {volumes} (template: {template['uuid']})")
        now = int(time.time() * 1000)
        t0 = time.perf_counter()
        for i in range(need):
            u = str(uuid.uuid4())
            rec = dict(template, uuid=u, name=f"bench-fill-{self.present + i:06d}", created=now, publications=[])
            (volumes / f"{u}.json").write_text(json.dumps(rec, indent=2, sort_keys=True))
            with open(volumes / f"{u}.img", "wb") as f:
                f.truncate(rec["sizeBytes"])
        os.sync()
        self.present += need
        log(f"  written in {time.perf_counter() - t0:.1f} s")

    async def at_scale(self, count: int) -> None:
        """CreateVolume (and DeleteVolume) sequentially with `count` volumes present."""
        a = self.args
        for r in range(a.repeats):
            log(f"CreateVolume with {count:,} present, repeat {r + 1}/{a.repeats}")
            names = [f"bench-at{count}-r{r}-{i}" for i in range(a.ops)]
            vols = await self.batch(f"create_seq_at_{count}", f"CreateVolume, sequential, {count:,} volumes present",
                                    a.ops, 1, self.create_call(names), detail=f"CreateVolume at {count:,}")
            await self.batch(f"delete_seq_at_{count}", f"DeleteVolume, sequential, {count:,} volumes present",
                             a.ops, 1, self.delete_call(vols), detail=f"DeleteVolume at {count:,}")

    async def list_all(self, count: int, page: int) -> None:
        import csi_pb2
        label = (f"ListVolumes of {count:,} volumes, pages of {page}" if page else
                 f"ListVolumes of {count:,} volumes, one call (max_entries 0)")
        fid = f"list_{count}_{'paged' if page else 'unpaged'}"
        budget = self.args.list_budget
        for r in range(self.args.repeats):
            token, entries, pages = "", 0, 0
            t0 = time.perf_counter()
            stopped = False
            while True:
                resp = await self.ctrl[0].ListVolumes(csi_pb2.ListVolumesRequest(max_entries=page,
                                                                                  starting_token=token), timeout=600)
                pages += 1
                entries += len(resp.entries)
                token = resp.next_token
                if not token:
                    break
                if time.perf_counter() - t0 > budget:
                    stopped = True
                    break
            ms = (time.perf_counter() - t0) * 1000
            value = {"ms": ms, "entries": entries, "pages": pages}
            if stopped:
                # Not worth waiting for: the time so far, and the whole listing extrapolated.
                value.update(incomplete=True, extrapolated_ms=ms * count / max(entries, 1))
                self.record(fid, label, "list", value)
                self.notes.append(f"{label}: stopped after {budget:.0f} s (--list-budget) at {entries:,} "
                                     f"entries; the whole listing would take about "
                                     f"{value['extrapolated_ms'] / 1000:,.1f} s")
                log(f"  {label}: STOPPED after {ms / 1000:.0f} s at {entries:,} entries ({pages} calls): about "
                    f"{value['extrapolated_ms'] / 1000:,.1f} s for all")
                return
            self.record(fid, label, "list", value)
            log(f"  {label}: {fmt_ms(ms)} ({entries:,} entries in {pages} call{'s' if pages != 1 else ''})")
            if entries != count:
                self.failures.append(f"{label}: listed {entries} entries, expected {count}")

    async def restart(self, count: int) -> None:
        """Target and controller start-up with `count` volumes present."""
        a = self.args
        await self.close_clients()
        self.controller.stop()
        for r in range(a.repeats):
            self.target.stop()
            proc = self.start_target()
            listening, answered = await self.wait_target(proc, a.startup_timeout)
            self.record(f"target_start_{count}", f"target: start to listening / to first answer ({count:,} volumes)",
                        "startup", {"listening_ms": listening * 1000, "answer_ms": answered * 1000})
            log(f"  target with {count:,}: listening {listening * 1000:.0f} ms, first GetInfo "
                f"{answered * 1000:.0f} ms")
        for r in range(a.repeats):
            if r:
                self.controller.stop()
            proc = self.start_controller()
            listening, answered, ready = await self.wait_controller(proc, a.startup_timeout)
            self.record(f"controller_start_{count}",
                        f"controller: start to socket / GetPluginInfo / Probe ready ({count:,} volumes)", "startup",
                        {"listening_ms": listening * 1000, "answer_ms": answered * 1000, "ready_ms": ready * 1000})
            log(f"  controller with {count:,}: socket {listening * 1000:.0f} ms, GetPluginInfo "
                f"{answered * 1000:.0f} ms, Probe ready {ready * 1000:.0f} ms")
        await self.open_clients()

    async def large(self) -> None:
        a = self.args
        count = a.large_volumes
        log(f"--large: {count:,} volumes")
        await self.close_clients()
        self.controller.stop()
        self.target.stop()
        self.write_records(count - self.present)
        await self.restart(count)
        await self.list_all(count, a.page_size)
        await self.memory(f"{count}", f"with {count:,} volumes (fresh start, after listing)")

    async def main(self) -> None:
        a = self.args
        self.setup_store()
        self.setup_tls()
        self.method["binary"] = {"path": str(self.bin), "bytes": self.bin.stat().st_size, "build": self.build,
                                 "swift_runtime": swift_runtime_linkage(self.bin)}
        await self.startup_empty()
        await self.memory("idle", "idle (no volumes)")
        await self.round_trips()
        self.disk_floors()
        for r in range(a.repeats):
            await self.lifecycle(r)
        try:
            await self.two_targets()
        except BenchError as e:
            self.failures.append(f"stage 'two targets' failed: {e}")
            log(f"stage 'two targets' FAILED: {e}")
        stages = [
            (f"{a.scale:,} volumes present", self.scale_stage),
            (f"{a.list_volumes:,} volumes", self.list_stage),
        ]
        if a.large:
            stages.append((f"{a.large_volumes:,} volumes (--large)", self.large))
        for name, stage in stages:
            try:
                await stage()
            except BenchError as e:
                self.failures.append(f"stage '{name}' failed: {e}")
                log(f"stage '{name}' FAILED: {e}")
                break

    async def two_targets(self) -> None:
        """Creates and deletes with a second target beside the first: a name whose home is
        one target and that goes to the other is reserved at its home first (the home's
        placement journal, group-committed), then created; on its home, one call."""
        a = self.args
        clients = max(1, a.clients)
        log("two targets: a second target, the controller restarted over both")
        await self.close_clients()
        self.controller.stop()
        await self.wait_target(self.start_second_target(), a.startup_timeout, port=self.second_target_port)
        await self.wait_controller(self.start_controller(), a.startup_timeout)
        await self.open_clients()
        placed: dict[str, int] = {}
        for r in range(a.repeats):
            names = [f"bench-two-{r}-{i:05d}" for i in range(a.ops)]
            created = await self.batch("two_create", f"CreateVolume, {clients} clients, two targets", a.ops, clients,
                                       self.create_call(names))
            ids: list[str | None] = created
            for volume_id in ids:
                if volume_id:
                    target = volume_id.split(".")[1]
                    placed[target] = placed.get(target, 0) + 1
            await self.batch("two_delete", f"DeleteVolume, {clients} clients, two targets", a.ops, clients,
                             self.delete_call(ids))
        self.method["two_targets"] = (f"after the lifecycle repeats (the stores hold no volume), a second target "
                                      f"process beside the first (its store a directory on the same file system, "
                                      f"its nvmet simulated apart), the controller restarted over both; volumes "
                                      f"created per target: {placed}; then the second target stopped and the "
                                      f"controller restarted over the first alone")
        await self.close_clients()
        self.controller.stop()
        self.second_target.stop()
        self.second_target = None
        await self.wait_controller(self.start_controller(), a.startup_timeout)
        await self.open_clients()

    async def scale_stage(self) -> None:
        await self.fill(self.args.scale, "api")
        await self.at_scale(self.args.scale)

    async def list_stage(self) -> None:
        a = self.args
        count = a.list_volumes
        records = a.populate == "records" and count > self.present
        if records:
            await self.close_clients()
            self.controller.stop()
            self.target.stop()
            self.write_records(count - self.present)
            await self.restart(count)
            await self.memory(f"{count}_fresh", f"with {count:,} volumes (fresh start)")
            self.method["populate"] = (f"volumes beyond {a.scale:,} written as records straight into the store "
                                       "(--populate records)")
        else:
            await self.fill(count, "api")
            self.method["populate"] = f"every volume created through CSI CreateVolume ({a.clients} clients)"
        await self.at_scale(count)
        await self.list_all(count, a.page_size)
        await self.list_all(count, 0)
        await self.memory(f"{count}", f"with {count:,} volumes (after the workload)")
        if not records:
            await self.restart(count)
            await self.memory(f"{count}_fresh", f"with {count:,} volumes (fresh start)")


# ---------------------------------------------------------------------------
# Machine facts


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    disk = Bench.host_fs(BUILD_DIR)
    source = disk.split(",")[0].strip()
    dev = Path(source).name
    rotational = ""
    with contextlib.suppress(OSError):
        base = re.sub(r"p?\d+$", "", dev) if not Path(f"/sys/block/{dev}").exists() else dev
        rotational = "the kernel calls it " + ("rotational" if Path(f"/sys/block/{base}/queue/rotational")
                                                  .read_text().strip() == "1" else "non-rotational")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
            "os": _os_release(), "disk": f"{disk} ({rotational})" if rotational else disk,
            "python": platform.python_version(), "grpcio": _version("grpcio")}


LOAD: dict[str, str] = {}


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(open("/proc/loadavg").read().split()[:3])
    return "?"


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return ""


def _version(dist: str) -> str:
    from importlib import metadata
    with contextlib.suppress(Exception):
        return metadata.version(dist)
    return "?"


# ---------------------------------------------------------------------------
# Summaries and the results files


def med(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def with_device_flushes(out: dict, reps: list[dict]) -> dict:
    """`out` with the median of the repeats' device flushes per operation, if counted."""
    flushes = [r["device_flushes_per_op"] for r in reps if "device_flushes_per_op" in r]
    if flushes:
        out["device_flushes_per_op"] = med(flushes)
    return out


def summarize(fig: dict) -> dict:
    reps = fig["repeats"]
    kind = fig["kind"]
    if kind == "rate":
        out = {"per_s": med([r["per_s"] for r in reps]), "p50_ms": med([r["p50_ms"] for r in reps]),
               "p99_ms": med([r["p99_ms"] for r in reps]), "errors": sum(r["errors"] for r in reps),
               "ops": reps[0]["ops"], "repeats": len(reps)}
        return with_device_flushes(out, reps)
    if kind == "latency":
        out = {"p50_ms": med([r["p50_ms"] for r in reps]), "p99_ms": med([r["p99_ms"] for r in reps]),
               "repeats": len(reps)}
        return with_device_flushes(out, reps)
    if kind == "startup":
        out = {k: med([r[k] for r in reps]) for k in reps[0]}
        out["repeats"] = len(reps)
        return out
    if kind == "list":
        out = {"ms": med([r["ms"] for r in reps]), "entries": reps[0]["entries"], "pages": reps[0]["pages"],
               "repeats": len(reps)}
        if any(r.get("incomplete") for r in reps):
            out.update(incomplete=True, extrapolated_ms=med([r["extrapolated_ms"] for r in reps if "extrapolated_ms" in r]))
        return out
    if kind == "memory":
        return {k: reps[-1][k] for k in reps[-1]}
    return {}


def ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")


def swift_runtime_linkage(binary: Path) -> str:
    """'linked statically' or 'shared libraries', from the binary's dynamic dependencies."""
    out = run(["ldd", str(binary)], check=False)
    return "shared libraries" if "libswiftCore.so" in out else "linked statically"


def build_table(b: Bench, s: dict[str, dict]) -> list[dict]:
    """The rows of the results table: figure, result, p50, p99, goal, met."""
    a = b.args
    rows: list[dict] = []

    def get(fid):
        return s.get(fid)

    def rate_row(fid, goal=None, met=None, note=""):
        x = get(fid)
        if not x:
            return
        result = fmt_rate(x["per_s"]) + (f" ({x['errors']} errors)" if x["errors"] else "")
        if "device_flushes_per_op" in x:
            flushes = f"{x['device_flushes_per_op']:.2f} device flushes per call"
            note = f"{note}; {flushes}" if note else flushes
        rows.append({"id": fid, "figure": b.figures[fid]["label"], "result": result, "p50": fmt_ms(x["p50_ms"]),
                     "p99": fmt_ms(x["p99_ms"]), "goal": goal or "", "met": met, "note": note})

    def yn(v):
        return None if v != v else bool(v)

    cs, cc = get("create_seq"), get("create_conc")
    rate_row("create_seq", "≥ 650/s", yn(cs["per_s"] >= 650) if cs else None)
    rate_row("create_conc", f"≥ 1,900/s with 16 clients", yn(cc["per_s"] >= 1900) if cc and a.clients == 16 else None)
    for count in (a.scale, a.list_volumes):
        x = get(f"create_seq_at_{count}")
        if x and cs:
            r = ratio(x["p50_ms"], cs["p50_ms"])
            rate_row(f"create_seq_at_{count}", "flat from 0 to 10,000 (read here: p50 ≤ 1.2× the empty store's)",
                     yn(r <= 1.2), note=f"p50 {r:.2f}× the empty store's")
    fill = get(f"fill_to_{a.list_volumes}")
    if fill:
        rate_row(f"fill_to_{a.list_volumes}")
    for mode in ("seq", "conc"):
        base = get(f"create_{mode}")
        for op, goal in (("snapshot", True), ("restore", True), ("clone", False)):
            fid = f"{op}_{mode}"
            x = get(fid)
            if not x:
                continue
            r = ratio(x["p50_ms"], base["p50_ms"]) if base else float("nan")
            rt = ratio(base["per_s"], x["per_s"]) if base else float("nan")
            note = f"p50 {r:.2f}× CreateVolume's; throughput 1/{rt:.2f} of it"
            if goal and mode == "seq":
                rate_row(fid, "within 1.5× of CreateVolume (p50)", yn(r <= 1.5), note)
            elif goal:
                rate_row(fid, "within 1.5× of CreateVolume (throughput)", yn(rt <= 1.5), note)
            else:
                rate_row(fid, note=note)
    for fid in ("delete_seq", "delete_conc", f"delete_seq_at_{a.scale}", f"delete_seq_at_{a.list_volumes}",
                "delete_snapshot_seq", "delete_snapshot_conc", "publish_seq", "publish_conc", "unpublish_seq",
                "unpublish_conc"):
        rate_row(fid)
    rate_row("two_create", note="a name whose home is the other target is reserved there first")
    rate_row("two_delete")
    for fid, goal_ms in ((f"list_{a.list_volumes}_paged", 1000), (f"list_{a.list_volumes}_unpaged", 1000),
                         (f"list_{a.large_volumes}_paged", None), (f"list_{a.large_volumes}_unpaged", None)):
        x = get(fid)
        if x:
            goal = "< 1 s" if goal_ms and a.list_volumes == 10000 else ""
            note = f"{x['entries']:,} entries in {x['pages']:,} call{'s' if x['pages'] != 1 else ''}"
            result = fmt_ms(x["ms"])
            if x.get("incomplete"):
                result = f"> {x['ms'] / 1000:,.1f} s (stopped)"
                note = (f"stopped by --list-budget after {note}; about {x['extrapolated_ms'] / 1000:,.1f} s for all "
                        "(extrapolated)")
            rows.append({"id": fid, "figure": b.figures[fid]["label"], "result": result, "p50": "", "p99": "",
                         "goal": goal, "met": (x["ms"] < goal_ms and not x.get("incomplete")) if goal else None,
                         "note": note})
    probe, info, tget = get("probe"), get("plugin_info"), get("target_getinfo")
    for fid in ("probe", "plugin_info", "target_getinfo"):
        x = get(fid)
        if x:
            rows.append({"id": fid, "figure": b.figures[fid]["label"], "result": fmt_ms(x["p50_ms"]),
                         "p50": fmt_ms(x["p50_ms"]), "p99": fmt_ms(x["p99_ms"]), "goal": "", "met": None, "note": ""})
    if probe and info:
        hop = probe["p50_ms"] - info["p50_ms"]
        rows.append({"id": "hop", "figure": "controller → target round trip (Probe p50 − GetPluginInfo p50)",
                     "result": fmt_ms(hop), "p50": "", "p99": "", "goal": "≤ 0.5 ms on loopback", "met": hop <= 0.5,
                     "note": "the target's GetInfo work (one statvfs) included"})
    for fid in ("disk_record_commit", "disk_append"):
        x = get(fid)
        if x:
            flushes = x.get("device_flushes_per_op")
            rows.append({"id": fid, "figure": b.figures[fid]["label"], "result": fmt_ms(x["p50_ms"]),
                         "p50": fmt_ms(x["p50_ms"]), "p99": fmt_ms(x["p99_ms"]), "goal": "", "met": None,
                         "note": "" if flushes is None else f"{flushes:.2f} device flushes each"})
    commit = get("disk_record_commit")
    if probe and commit:
        floor = probe["p50_ms"] + commit["p50_ms"]
        rows.append({"id": "create_floor", "figure": "a sequential create's floor here: Probe p50 (the two hops) "
                                                     "+ a record commit p50",
                     "result": f"{fmt_ms(floor)} ({fmt_rate(1000 / floor)})", "p50": "", "p99": "",
                     "goal": "", "met": None,
                     "note": "no work of the target's but the commit; ≥ 650/s needs ≤ 1.54 ms per create"})
    for role in ("controller", "target"):
        for suffix, goal in (("idle", "≤ 20 MB" if role == "controller" else ""), (f"{a.list_volumes}", ""),
                             (f"{a.list_volumes}_fresh", ""), (f"{a.large_volumes}", "")):
            fid = f"{role}_rss_{suffix}"
            x = get(fid)
            if not x:
                continue
            met = (x["VmRSS"] * 1024 <= 20e6) if goal else None
            rows.append({"id": fid, "figure": b.figures[fid]["label"], "result": fmt_mb(x["VmRSS"]), "p50": "",
                         "p99": "", "goal": goal, "met": met,
                         "note": f"anonymous {fmt_mb(x['RssAnon'])}, file-backed {fmt_mb(x['RssFile'])}"})
    size = b.method["binary"]["bytes"]
    rows.append({"id": "binary_size", "figure": f"binary size ({b.build} build)", "result": f"{size / 1e6:.1f} MB",
                 "p50": "", "p99": "", "goal": "", "met": None, "note": f"{size:,} bytes"})
    for fid in ("target_start_empty", f"target_start_{a.list_volumes}", f"target_start_{a.large_volumes}"):
        x = get(fid)
        if x:
            count = fid.rsplit("_", 1)[1]
            goal, met = "", None
            if count == str(a.large_volumes) and a.large_volumes == 100000:
                goal, met = "seconds (read here: < 10 s)", x["answer_ms"] < 10000
            rows.append({"id": fid, "figure": b.figures[fid]["label"],
                         "result": f"{x['listening_ms']:,.0f} ms / {x['answer_ms']:,.0f} ms", "p50": "", "p99": "",
                         "goal": goal, "met": met, "note": ""})
    for fid in ("controller_start", f"controller_start_{a.list_volumes}", f"controller_start_{a.large_volumes}"):
        x = get(fid)
        if x:
            rows.append({"id": fid, "figure": b.figures[fid]["label"],
                         "result": f"{x['listening_ms']:,.0f} / {x['answer_ms']:,.0f} / {x['ready_ms']:,.0f} ms",
                         "p50": "", "p99": "", "goal": "", "met": None, "note": ""})
    return rows


def breakdown_rows(b: Bench) -> list[dict]:
    """Per sequential operation: the client's p50, each process's server-side mean per
    RPC method (from its Prometheus histograms) and CPU per operation; medians of repeats."""
    rows = []
    for op, reps in b.breakdown.items():
        methods = sorted({m for r in reps for m in r["server"]})
        server = {}
        for m in methods:
            vals = [r["server"][m] for r in reps if m in r["server"]]
            server[m] = {"calls_per_op": med([v["calls_per_op"] for v in vals]),
                         "mean_ms": med([v["mean_ms"] for v in vals])}
        flushes = [r["device_flushes_per_op"] for r in reps if r.get("device_flushes_per_op") is not None]
        rows.append({"op": op, "client_p50_ms": med([r["client_p50_ms"] for r in reps]), "server": server,
                     "cpu_ms_per_op": {k: med([r["cpu_ms_per_op"][k] for r in reps])
                                       for k in ("controller", "target", "client")},
                     "device_flushes_per_op": med(flushes) if flushes else None})
    return rows


def write_results(b: Bench, started: datetime.datetime, elapsed: float) -> tuple[Path, Path]:
    a = b.args
    summaries = {fid: summarize(f) for fid, f in b.figures.items()}
    table = build_table(b, summaries)
    breakdown = breakdown_rows(b)
    reduced = [k for k, v in DEFAULTS.items() if getattr(a, k) < v]
    date = started.strftime("%Y-%m-%d")
    stem = date + ("" if b.build == "release" else f"-{b.build}") + ("-reduced" if reduced else "")
    out = Path(a.out) if Path(a.out).is_absolute() else REPO / a.out
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out / f"{stem}.md", out / f"{stem}.json"
    m = machine()
    m["load_average"] = {"start": LOAD.get("start", "?"), "end": loadavg()}
    params = {k: getattr(a, k) for k in ("repeats", "ops", "clients", "scale", "list_volumes", "large",
                                          "large_volumes", "page_size", "probes", "volume_size_mib", "data_kib",
                                          "populate", "plaintext", "log_level")}
    commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False)
    dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--", "Sources", "Package.swift"], check=False)
    doc = {
        "date": date, "started": started.isoformat(timespec="seconds"), "elapsed_s": round(elapsed, 1),
        "commit": commit + (" (Sources modified)" if dirty else ""), "build": b.build, "reduced_scale": reduced,
        "parameters": params, "machine": m, "method": b.method, "notes": b.notes, "failures": b.failures,
        "table": table, "breakdown": breakdown, "summaries": summaries, "figures": b.figures,
    }
    json_path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")

    L = []
    title = f"# nvme-csi control-plane bench, {date}"
    if b.build != "release":
        title += f" — {b.build.upper()} BUILD"
    if reduced:
        title += " — REDUCED SCALE"
    L += [title, ""]
    if b.build != "release" or reduced:
        L += [f"> Not the reference figures: {'a ' + b.build + ' build' if b.build != 'release' else ''}"
              f"{' and ' if b.build != 'release' and reduced else ''}"
              f"{'reduced scale (' + ', '.join(f'--{k.replace(chr(95), chr(45))} {getattr(a, k)}' for k in reduced) + ')' if reduced else ''}."
              " `make bench` (release build, defaults) gives the reference.", ""]
    L += [f"`make bench` at {doc['commit']}, {b.build} build; median of {a.repeats} repeat(s); "
          f"took {elapsed / 60:.1f} min. JSON twin: [{json_path.name}]({json_path.name}).", ""]
    if b.failures:
        L += ["**Failures in this run** (figures affected are incomplete):", ""]
        L += [f"- {f}" for f in b.failures] + [""]
    L += ["## Results", "",
          "| Figure | Result | p50 | p99 | Goal (issue 13) | Met | Note |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        L.append(f"| {r['figure']} | {r['result']} | {r['p50']} | {r['p99']} | {r['goal']} | {met} | {r['note']} |")
    L += ["", "Throughput is successful calls per second of wall time for the batch; p50/p99 are per-call "
          "latencies seen by the client. Start-up figures are from the process's exec to the event, "
          "medians of repeats.", ""]
    if breakdown:
        L += ["## Where the time goes (sequential calls)", "",
              "Server-side mean per RPC from each process's own `nvmecsi_rpc_duration_seconds` histogram "
              "(calls per operation in brackets), and CPU time per operation from /proc/<pid>/stat "
              "(client: this Python process); device flushes per operation are the flush requests the "
              "store's loop device completed (/sys/block/<dev>/stat), what the syncs cost the disk.", "",
              "| Operation | client p50 | controller | target | CPU ms/op controller / target / client "
              "| device flushes/op |",
              "| --- | --- | --- | --- | --- | --- |"]
        for r in breakdown:
            parts = {"controller": [], "target": []}
            for name, v in r["server"].items():
                role, method = name.split(" ", 1)
                calls = f" [×{v['calls_per_op']:.2f}]" if abs(v["calls_per_op"] - 1) > 0.01 else ""
                parts[role].append(f"{method} {v['mean_ms']:.2f} ms{calls}")
            c = r["cpu_ms_per_op"]
            f = r.get("device_flushes_per_op")
            L.append(f"| {r['op']} | {fmt_ms(r['client_p50_ms'])} | {'; '.join(parts['controller'])} | "
                     f"{'; '.join(parts['target'])} | {c['controller']:.2f} / {c['target']:.2f} / {c['client']:.2f} "
                     f"| {'' if f is None else f'{f:.2f}'} |")
        L.append("")
    meth = b.method
    L += ["## Method", "",
          f"- **Machine**: {m['cpu']}, {m['cores']} cores, {m['memory']} memory; kernel {m['kernel']} "
          f"({m['os']}); disk: {m['disk']}. Load average (1, 5, 15 min) at the start {m['load_average']['start']}, "
          f"at the end {m['load_average']['end']}: anything above the bench's own load is other work on the "
          "machine, and noise in these figures.",
          f"- **Build**: {b.build}; binary {meth['binary']['path']}, {meth['binary']['bytes']:,} bytes"
          f"{' (unstripped debug build: not comparable)' if b.build == 'debug' else ''}; Swift runtime and "
          f"Foundation {meth['binary'].get('swift_runtime', '?')} (the image links them statically).",
          f"- **Store**: {meth.get('store', 'directory ' + str(meth.get('store_path')))}; mounted as "
          f"`{meth.get('store_fs', '?')}`. Records are fsync'd (the target's own durable commits). "
          f"Volumes of {a.volume_size_mib} MiB (sparse); each snapshot or clone source first gets "
          f"{a.data_kib} KiB of data written into its file, so reflinks copy real extents.",
          f"- **nvmet**: {meth.get('configfs')} (`--configfs DIR`): nothing is served to the kernel; real configfs "
          "costs (enabling a namespace opens its backing file) are not in these figures.",
          f"- **Processes**: `nvme-csi target` and `nvme-csi controller` as real processes; the target API "
          f"{meth.get('target_api')}; CSI on a unix socket; both with `--metrics-address` (as deployed) and "
          f"`--log-level {a.log_level}`.",
          f"- **Client**: Python {m['python']}, grpcio {m['grpcio']} (asyncio API), stubs generated at bench "
          f"time from proto/csi.proto; sequential = one client awaiting each call; concurrent = {a.clients} "
          "clients, each on its own connection, in one asyncio loop. The client shares the 2 cores with "
          "the processes under test (its CPU per operation is in the table above: a grpcio call costs the "
          "client a few hundred microseconds of CPU, so near the goal rates the client takes a good part of a "
          "core).",
          f"- **Repeats**: every figure is the median of {a.repeats} repeat(s) (p50 and p99 are each the median "
          f"of the repeats' percentiles); {a.ops} operations per batch; {a.probes} calls per round-trip figure "
          f"after 20 warm-up calls. Each lifecycle repeat creates, publishes, unpublishes, snapshots, restores, "
          f"clones and deletes its own volumes, so the store holds the same number of volumes at every repeat.",
          f"- **Volumes present**: {meth.get('populate', 'through the API')}. The API fill's rate is a row of "
          f"the table. ListVolumes pages through the controller with max_entries {a.page_size} until "
          "next_token is empty.",
          "- **Resident memory**: VmRSS from /proc/<pid>/status, after "
          f"{a.settle:.0f} s idle; anonymous and file-backed parts (RssAnon, RssFile) in the note.",
          f"- **Two targets**: {meth.get('two_targets', 'not run')}. The rows' target CPU is both "
          "targets'.",
          "- **Start-up**: from exec to the target's TCP port accepting a connection / answering GetInfo "
          "(a fresh gRPC connection), and to the controller's socket accepting / answering GetPluginInfo / "
          "Probe ready=true (the target reached).",
          "- **Host-path comparison**: not measured. csi-driver-host-path is a Go program and this machine has "
          "no Go toolchain nor its binary (nothing is downloaded); issue 13's host-path column came from "
          "another run and is not repeated here.",
          ]
    for n in b.notes:
        L.append(f"- **Note**: {n}")
    L += [f"- **Parameters**: `{' '.join(sys.argv[1:])}`", ""]
    md_path.write_text("\n".join(L))
    return md_path, json_path


# ---------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bin", required=True, help="the nvme-csi binary to measure")
    p.add_argument("--build", choices=["release", "debug"], help="its build type (default: from its path)")
    p.add_argument("--repeats", type=int, default=DEFAULTS["repeats"], help="repeats; each figure is their median")
    p.add_argument("--ops", type=int, default=DEFAULTS["ops"], help="operations per measured batch")
    p.add_argument("--clients", type=int, default=DEFAULTS["clients"], help="concurrent clients")
    p.add_argument("--scale", type=int, default=DEFAULTS["scale"],
                   help="volumes present for the 'CreateVolume with N volumes present' figure")
    p.add_argument("--list-volumes", type=int, default=DEFAULTS["list_volumes"],
                   help="volumes present for ListVolumes, the memory and start-up figures")
    p.add_argument("--large", action="store_true", help="also --large-volumes volumes (records written directly)")
    p.add_argument("--large-volumes", type=int, default=100000, help="how many volumes --large means")
    p.add_argument("--populate", choices=["api", "records"], default="api",
                   help="how the volumes beyond --scale are made for --list-volumes: CreateVolume calls, or records "
                        "written straight into the stopped target's store")
    p.add_argument("--page-size", type=int, default=100, help="ListVolumes max_entries")
    p.add_argument("--list-budget", type=float, default=120,
                   help="seconds one full ListVolumes listing may take before it is stopped (and extrapolated)")
    p.add_argument("--probes", type=int, default=DEFAULTS["probes"], help="calls per round-trip figure")
    p.add_argument("--volume-size-mib", type=int, default=1, help="size of every volume")
    p.add_argument("--data-kib", type=int, default=256, help="data written into each snapshot/clone source")
    p.add_argument("--settle", type=float, default=2.0, help="seconds idle before reading RSS")
    p.add_argument("--startup-timeout", type=float, default=600, help="seconds a start-up may take")
    p.add_argument("--plaintext", action="store_true", help="target API without TLS (default: mutual TLS)")
    p.add_argument("--log-level", default="warning", help="the processes' --log-level (debug logs every RPC's ms)")
    p.add_argument("--store-dir", help="use a directory here as the store instead of a loop-mounted XFS")
    p.add_argument("--require-xfs", action="store_true", help="fail instead of falling back to a directory")
    p.add_argument("--configfs-on-disk", action="store_true",
                   help="keep the simulated configfs on the work directory's disk, not on tmpfs")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, store) afterwards")
    p.add_argument("--out", default="bench/results", help="where the results are written")
    args = p.parse_args()
    if args.repeats < 1 or args.ops < 1 or args.clients < 1:
        p.error("--repeats, --ops and --clients must be at least 1")
    if args.list_volumes < args.scale:
        p.error("--list-volumes must be at least --scale")
    if args.large and args.large_volumes <= args.list_volumes:
        p.error("--large-volumes must be more than --list-volumes")
    return args


def main() -> int:
    args = parse_args()
    if not Path(args.bin).is_file() or not os.access(args.bin, os.X_OK):
        print(f"bench: no executable nvme-csi at {args.bin}", file=sys.stderr)
        return 2
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    generate_stubs()

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = datetime.datetime.now()
    t0 = time.perf_counter()
    LOAD["start"] = loadavg()
    with contextlib.ExitStack() as stack:
        bench = Bench(args, stack)
        stack.callback(bench.stop_all)
        log(f"{bench.build} build {bench.bin}; work directory {bench.work}")
        if bench.build != "release":
            log(f"NOTE: a {bench.build} build: the results file is named for it")

        async def go():
            try:
                await bench.main()
            finally:
                await bench.close_clients()

        try:
            asyncio.run(go())
        except BenchError as e:
            bench.failures.append(str(e))
            log(f"FAILED: {e}")
        except KeyboardInterrupt:
            log("interrupted: cleaning up, no results written")
            return 130
        except Exception:
            bench.failures.append(traceback.format_exc().strip().splitlines()[-1])
            traceback.print_exc()
        if args.keep:
            log(f"logs in {bench.logs}")
        if not bench.figures:
            log("no figures measured: no results written")
            return 1
        md, js = write_results(bench, started, time.perf_counter() - t0)
        log(f"results: {md.relative_to(REPO) if md.is_relative_to(REPO) else md} and {js.name}")
        return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
