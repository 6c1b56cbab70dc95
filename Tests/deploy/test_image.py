"""(7) The image carries what the binary needs (docs/image.md).

(a) Every tool the sources run is in CommandRunner.packages, and the Debian package
    of each is installed by the Dockerfile's final stage.
(b) Every shared library of the binary (ldd on NVME_CSI_BIN) comes from a Debian
    package that the final stage installs, or that one of those depends on, or that
    debian:bookworm-slim already has.
(c) Both checks are run on a copy of the Dockerfile (and of the sources) with a
    package (a tool) taken out or added, and must name it.

No network and no container engine: the Dockerfile and the Swift sources are parsed,
and Debian's package metadata is read from this machine (dpkg, apt-cache), which is
Debian 12 like the image's base.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

import deploylib
from deploylib import REPO

DOCKERFILE = REPO / "Dockerfile"
SOURCES = REPO / "Sources"
COMMAND_RUNNER = SOURCES / "NVMeCSICore" / "CommandRunner.swift"

# What the tools themselves run, which no scan of our sources can see: lvm runs
# thin_check/thin_repair/thin_dump (lvm.conf thin_check_executable …) when it
# activates or repairs a thin pool, so the LVM thin store needs them. LVMCommand's
# "install lvm2 and thin-provisioning-tools" says the same (checked below).
INDIRECT_PACKAGES = {"lvm": ["thin-provisioning-tools"]}

# The tools the scanner must find today: a scanner that stops seeing them is broken.
KNOWN_TOOLS = {"mkfs.ext4", "mkfs.xfs", "blkid", "resize2fs", "xfs_growfs", "lvm"}
KNOWN_LVM_COMMANDS = {"lvcreate", "lvchange", "lvextend", "lvremove", "lvs"}
# LVM's commands are names of the one `lvm` binary (lvm2 installs lvcreate, lvs, …
# as links to it); LVMCommand.run(["lvcreate", …]) runs `lvm lvcreate …`.
LVM_COMMAND = re.compile(r"^(lv|vg|pv)[a-z]+$")


# --- the Dockerfile --------------------------------------------------------------------

def _instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    instructions: list[str] = []
    current = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            instructions.append(current.strip())
        current = ""
    if current.strip():
        instructions.append(current.strip())
    return instructions


def final_stage(dockerfile: Path) -> tuple[str, list[str]]:
    """The image the last FROM names (build ARGs substituted) and that stage's instructions."""
    instructions = _instructions(dockerfile)
    args: dict[str, str] = {}
    froms = []
    for index, instruction in enumerate(instructions):
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() == "ARG" and not froms:  # global ARGs, usable in FROM
            name, _, default = rest.strip().partition("=")
            args[name] = default.strip().strip('"')
        elif keyword.upper() == "FROM":
            froms.append(index)
    assert froms, f"{dockerfile} has no FROM"
    words = [w for w in instructions[froms[-1]].split()[1:] if not w.startswith("--platform")]
    image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
    return image, instructions[froms[-1] + 1:]


def installed_packages(dockerfile: Path) -> set[str]:
    """What `apt-get install` (or `apt install`) installs in the final stage."""
    _, stage = final_stage(dockerfile)
    packages: set[str] = set()
    for instruction in stage:
        keyword, _, command = instruction.partition(" ")
        if keyword.upper() != "RUN":
            continue
        if command.lstrip().startswith("["):  # exec form: no shell, no apt-get
            continue
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        # Each simple command of the shell line (split on && || ; | &).
        simple_commands: list[list[str]] = [[]]
        for token in tokens:
            if token in ("&&", "||", ";", "|", "&", ";;"):
                simple_commands.append([])
            else:
                simple_commands[-1].append(token)
        for words in simple_commands:
            while words and re.match(r"^\w+=", words[0]):  # DEBIAN_FRONTEND=… apt-get
                words.pop(0)
            if len(words) < 2 or os.path.basename(words[0]) not in ("apt-get", "apt"):
                continue
            rest = []
            words = iter(words[1:])
            for word in words:
                if word in ("-o", "-c", "-t", "--option", "--config-file", "--target-release"):
                    next(words, None)  # an option's value, not a package
                elif not word.startswith("-"):
                    rest.append(word)
            if rest[:1] != ["install"]:
                continue
            for word in rest[1:]:
                packages.add(re.split(r"[=:]", word)[0])  # pkg=version, pkg:arch
    return packages


# --- the Swift sources -------------------------------------------------------------------

def packages_map(command_runner: Path = COMMAND_RUNNER) -> dict[str, str]:
    """CommandRunner.packages: tool → Debian package."""
    text = command_runner.read_text()
    m = re.search(r"static let packages: \[String: String\] = \[(.*?)\n\s*\]", text, re.S)
    assert m, f"no `static let packages: [String: String] = [...]` in {command_runner}"
    pairs = dict(re.findall(r'"([^"]+)"\s*:\s*"([^"]+)"', m.group(1)))
    assert pairs, f"CommandRunner.packages in {command_runner} parsed as empty"
    return pairs


def _swift_files(sources: Path) -> list[Path]:
    # Generated protobuf code runs nothing.
    return [p for p in sorted(sources.rglob("*.swift")) if p.parent.name not in ("CSIProto", "TargetProto")]


def _where(path: Path, text: str, offset: int) -> str:
    try:
        shown = path.relative_to(REPO)
    except ValueError:
        shown = path
    return f"{shown}:{text.count(chr(10), 0, offset) + 1}"


# runner.run("blkid", …), runner.runHere(\n "lvm", …)
RUN_LITERAL = re.compile(r'\.run(?:Here)?\(\s*"([^"]+)"')
# lvm.run(["lvcreate", …]), lvm.run(\n ["lvchange"] + …), try run(["lvs", …])
RUN_ARRAY = re.compile(r'\brun(?:Here)?\(\s*\[\s*"([^"]+)"')
# runner.run(tool, arguments, …): the tool comes from a variable …
RUN_VARIABLE = re.compile(r"\.run(?:Here)?\(\s*([A-Za-z_]\w*)\s*,")
# … assigned a literal somewhere in the same file (SystemMounter: tool = "mkfs.ext4").
ASSIGNMENT = r'\b{name}\s*(?::\s*String\s*)?=\s*"([^"]+)"'


def executed_tools(sources: Path = SOURCES) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str]]:
    """(tool → where it is run, LVM command → where, problems the scanner cannot resolve)."""
    tools: dict[str, list[str]] = {}
    lvm_commands: dict[str, list[str]] = {}
    problems: list[str] = []
    for path in _swift_files(sources):
        text = path.read_text()
        for m in RUN_LITERAL.finditer(text):
            tools.setdefault(m.group(1), []).append(_where(path, text, m.start()))
        for m in RUN_ARRAY.finditer(text):
            name, where = m.group(1), _where(path, text, m.start())
            if LVM_COMMAND.match(name):
                lvm_commands.setdefault(name, []).append(where)
                tools.setdefault("lvm", []).append(where)
            else:
                problems.append(
                    f"{where} runs an argument vector starting with {name!r}: the scanner only knows"
                    " LVMCommand's (`lvm <lvcommand> …`); teach test_image.py what runs it")
        for m in RUN_VARIABLE.finditer(text):
            name, where = m.group(1), _where(path, text, m.start())
            values = re.findall(ASSIGNMENT.format(name=re.escape(name)), text)
            if not values:
                problems.append(
                    f"{where} runs the tool in variable {name!r}, which this file never assigns a literal:"
                    " the scanner cannot tell which tool that is; teach test_image.py")
            for value in values:
                tools.setdefault(value, []).append(where)
    return tools, lvm_commands, problems


def tool_problems(
    dockerfile: Path = DOCKERFILE, sources: Path = SOURCES, command_runner: Path = COMMAND_RUNNER
) -> list[str]:
    """Check (a): what is wrong between the tools the sources run and the final stage."""
    tools, _, problems = executed_tools(sources)
    packages = packages_map(command_runner)
    installed = installed_packages(dockerfile)
    for tool, where in sorted(tools.items()):
        name = os.path.basename(tool)
        package = packages.get(name)
        if package is None:
            problems.append(
                f"{where[0]} runs {tool!r}, which CommandRunner.packages does not map to a Debian package:"
                f" add it there (and its package to the Dockerfile's final stage)")
            continue
        for needed in [package] + INDIRECT_PACKAGES.get(name, []):
            if needed not in installed:
                problems.append(
                    f"{where[0]} runs {tool!r}, which needs Debian package {needed!r}: the Dockerfile's final"
                    f" stage does not install it; add {needed} to its apt-get install list")
    return problems


# --- Debian's package metadata (local: dpkg's database and apt's lists) -----------------------

def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _debian_codename() -> str | None:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None


@functools.cache
def _installed_here() -> dict[str, tuple[str, str]]:
    """Installed package → (Essential, Priority), from dpkg's database."""
    out = _run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Package} ${Essential} ${Priority}\n"])
    assert out.returncode == 0, f"dpkg-query failed: {out.stderr}"
    installed = {}
    for line in out.stdout.splitlines():
        status, package, essential, priority = (line.split() + ["", "", "", ""])[:4]
        if status == "installed":
            installed[package] = (essential, priority)
    return installed


@functools.cache
def base_image_roots() -> frozenset[str]:
    """The packages debian:bookworm-slim is made from, on this Debian 12 machine.

    The image is debootstrap's minbase variant: every Essential and Priority-required
    package, with their dependencies (slim only strips documentation and locales).
    Libraries such as libc6, libstdc++6 or zlib1g are Priority optional and come in as
    dependencies (of dpkg, apt, util-linux, …), so the closure over these roots is
    what counts (see allowed_packages). Only installed packages are listed here; every
    Debian system has all the required ones, and fewer roots only make the check
    stricter.
    """
    roots = {p for p, (essential, priority) in _installed_here().items()
             if essential == "yes" or priority == "required"}
    assert {"dpkg", "apt", "base-files"} <= roots, f"implausible Essential/required set: {sorted(roots)}"
    return frozenset(roots)


# package → its Depends/PreDepends, each an OR group of (name, providers if virtual).
_graph: dict[str, list[list[tuple[str, list[str]]]]] = {}


def _strip_arch(name: str) -> str:
    return name.split(":", 1)[0]


def _load_dependencies(roots: set[str]) -> None:
    """Adds the recursive Depends/PreDepends of `roots` to _graph (one apt-cache call)."""
    missing = sorted(r for r in roots if r not in _graph)
    if not missing:
        return
    out = _run([
        "apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
        "--no-breaks", "--no-replaces", "--no-enhances", *missing,
    ])
    assert out.returncode == 0, f"apt-cache depends failed: {out.stderr}"
    graph: dict[str, list[list[tuple[str, list[str]]]]] = {}
    current: list | None = None
    last: tuple[str, list[str]] | None = None
    or_open = False
    for line in out.stdout.splitlines():
        if not line.startswith(" "):
            name = line.strip()
            current = graph.setdefault(name if name.startswith("<") else _strip_arch(name), [])
            last, or_open = None, False
            continue
        m = re.match(r"^ ([ |])(\w+): (\S+)$", line)
        if m:
            bar, kind, name = m.groups()
            if kind not in ("Depends", "PreDepends"):
                last, or_open = None, False
                continue
            alternative = (name if name.startswith("<") else _strip_arch(name), [])
            if or_open and current:
                current[-1].append(alternative)
            elif current is not None:
                current.append([alternative])
            last, or_open = alternative, bar == "|"
        elif line.startswith("    ") and last is not None:
            last[1].append(_strip_arch(line.strip()))  # a provider of the line above
    for package, groups in graph.items():
        _graph.setdefault(package, groups)
    unknown = [r for r in missing if r not in _graph]
    assert not unknown, (
        f"apt-cache knows no package {unknown}: a typo in the Dockerfile, or this machine's package lists"
        " are missing (apt-get update)")


def _choice(group: list[tuple[str, list[str]]], preferred: list[set[str]]) -> str | None:
    """What satisfies `a | b` or a virtual package: an alternative (or provider) in the
    first of the `preferred` sets that has one (the roots, then what this Debian 12
    machine has installed: bookworm's `awk` is mawk, a required package, not gawk),
    else what apt takes, the first alternative or a virtual one's first provider."""
    for chosen in preferred:
        for name, providers in group:
            for candidate in [name, *providers]:
                if candidate in chosen:
                    return candidate
    for name, providers in group:
        if not name.startswith("<"):
            return name
        if providers:
            return providers[0]
    return None


def allowed_packages(roots: set[str]) -> set[str]:
    """`roots` with everything they depend on (Depends and PreDepends, recursively)."""
    # The real Dockerfile's packages too: one apt-cache call (about a second) then
    # serves the copies the negative tests make, whose packages are a subset.
    _load_dependencies(set(roots) | installed_packages(DOCKERFILE) | base_image_roots())
    preferred = [set(roots), set(_installed_here())]
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        package = todo.pop()
        if package in seen:
            continue
        seen.add(package)
        for group in _graph.get(package, []):
            chosen = _choice(group, preferred)
            if chosen and chosen not in seen:
                todo.append(chosen)
    return seen


# --- the binary's shared libraries ----------------------------------------------------------

def shared_libraries(binary: str) -> list[tuple[str, str | None]]:
    """(soname, resolved path or None when not found) for each library ldd lists."""
    out = _run(["ldd", binary])
    assert out.returncode == 0, f"ldd {binary} failed: {out.stderr or out.stdout}"
    libraries = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if m := re.match(r"^(\S+) => not found", line):
            libraries.append((m.group(1), None))
        elif m := re.match(r"^(\S+) => (/\S+) \(0x[0-9a-f]+\)$", line):
            libraries.append((m.group(1), m.group(2)))
        elif m := re.match(r"^(/\S+) \(0x[0-9a-f]+\)$", line):  # the dynamic loader
            libraries.append((os.path.basename(m.group(1)), m.group(1)))
        # linux-vdso.so.1 (0x…): the kernel's, no file
    assert libraries, f"ldd {binary} lists no libraries: {out.stdout}"
    return libraries


def toolchain_directory(libraries: list[tuple[str, str | None]]) -> str | None:
    """Where the Swift runtime libraries resolve (e.g. /opt/swift/usr/lib/swift/linux)."""
    for soname, path in libraries:
        if soname == "libswiftCore.so" and path:
            return os.path.dirname(os.path.realpath(path))
    return None


def _path_variants(path: str) -> list[str]:
    """dpkg records /lib/… or /usr/lib/… as the package shipped it; merged /usr makes both work."""
    variants = [path, os.path.realpath(path)]
    for p in list(variants):
        if p.startswith("/usr/"):
            variants.append(p[len("/usr"):])
        elif p.startswith(("/lib", "/bin", "/sbin")):
            variants.append("/usr" + p)
    return list(dict.fromkeys(variants))


def owning_packages(paths: list[str]) -> dict[str, str]:
    """path → the Debian package that ships it (one dpkg -S for all)."""
    candidates = sorted({v for p in paths for v in _path_variants(p)})
    out = _run(["dpkg", "-S", *candidates])  # exits 1 when some variant is unowned
    owner: dict[str, str] = {}
    for line in out.stdout.splitlines():
        if line.startswith("diversion by"):
            continue
        packages, _, path = line.partition(": ")
        owner[path.strip()] = _strip_arch(packages.split(",")[0].strip())
    found = {}
    for p in paths:
        for v in _path_variants(p):
            if v in owner:
                found[p] = owner[v]
                break
    return found


def library_problems(binary: str, dockerfile: Path = DOCKERFILE) -> list[str]:
    """Check (b): libraries of `binary` that the image built from `dockerfile` would lack."""
    libraries = shared_libraries(binary)
    # The image links the Swift runtime statically (--static-swift-stdlib): the
    # toolchain's own libraries (libswiftCore, libFoundation*, libdispatch,
    # libBlocksRuntime, lib_FoundationICU, …) are not looked up at run time there, so
    # they are skipped. What they need from the system (libstdc++, libm, libz, …)
    # ldd lists as well, and stays checked: the static binary needs it too.
    toolchain = toolchain_directory(libraries)
    problems = [f"{soname}: ldd finds no such library for {binary}" for soname, path in libraries if path is None]
    system = [(s, p) for s, p in libraries
              if p is not None and not (toolchain and os.path.realpath(p).startswith(toolchain + os.sep))]
    owners = owning_packages([p for _, p in system])
    image, _ = final_stage(dockerfile)
    allowed = allowed_packages(installed_packages(dockerfile) | set(base_image_roots()))
    for soname, path in system:
        package = owners.get(path)
        if package is None:
            problems.append(
                f"{soname} ({path}) belongs to no Debian package on this machine: apt-get cannot put it in"
                f" the image; link the binary against a packaged library")
        elif package not in allowed:
            problems.append(
                f"{soname} ({path}) comes from Debian package {package!r}, which the runtime stage neither"
                f" installs nor gets through {image} or the dependencies of what it installs:"
                f" add {package} to the apt-get install list of the Dockerfile's final stage")
    return problems


# --- (a) tools ---------------------------------------------------------------------------

def test_the_final_stage_parses():
    image, _ = final_stage(DOCKERFILE)
    assert image == "debian:bookworm-slim", f"the runtime stage is built FROM {image}; this check assumes Debian 12"
    assert {"libnvme1", "e2fsprogs", "xfsprogs", "lvm2"} <= installed_packages(DOCKERFILE)


def test_the_scanner_finds_the_tools_the_driver_runs():
    tools, lvm_commands, _ = executed_tools()
    assert KNOWN_TOOLS <= tools.keys(), f"the scanner misses {sorted(KNOWN_TOOLS - tools.keys())}"
    assert KNOWN_LVM_COMMANDS <= lvm_commands.keys(), (
        f"the scanner misses LVM commands {sorted(KNOWN_LVM_COMMANDS - lvm_commands.keys())}")
    # LVMCommand runs them all through the one `lvm` binary.
    lvm_command = (SOURCES / "VolumeStore" / "LVMCommand.swift").read_text()
    assert re.search(r'runHere\(\s*"lvm"', lvm_command), "LVMCommand no longer runs `lvm`: update test_image.py"
    for package in INDIRECT_PACKAGES["lvm"]:
        assert package in lvm_command, f"LVMCommand's install hint does not name {package}"


def test_every_tool_the_driver_runs_is_in_the_image():
    problems = tool_problems()
    assert not problems, "the image lacks tools the driver runs:\n" + "\n".join(problems)


# --- (b) shared libraries ----------------------------------------------------------------------

def _needs_debian_12():
    if not (shutil.which("dpkg") and shutil.which("apt-cache") and shutil.which("ldd")):
        pytest.skip("needs dpkg, apt-cache and ldd (a Debian machine)")
    if _debian_codename() != "bookworm":
        pytest.skip(f"maps libraries to Debian 12 packages; this machine is {_debian_codename()!r}")


def test_every_shared_library_of_the_binary_is_in_the_image(nvme_csi):
    _needs_debian_12()
    problems = library_problems(nvme_csi)
    assert not problems, "the image lacks shared libraries of nvme-csi:\n" + "\n".join(problems)


def test_the_library_check_sees_the_system_libraries(nvme_csi):
    """libnvme is linked dynamically in every build; the check must look at it."""
    _needs_debian_12()
    libraries = shared_libraries(nvme_csi)
    sonames = {s for s, _ in libraries}
    assert "libnvme.so.1" in sonames and "libc.so.6" in sonames, sorted(sonames)
    assert owning_packages([p for s, p in libraries if s == "libnvme.so.1"]), "dpkg -S finds no owner of libnvme"


# --- (c) each check bites ---------------------------------------------------------------------

def _without(dockerfile: Path, package: str, tmp_path: Path) -> Path:
    """A copy of the Dockerfile whose final stage no longer installs `package`."""
    head, sep, last_stage = dockerfile.read_text().rpartition("\nFROM ")
    word = re.compile(rf"(?<![\w.+-]){re.escape(package)}(?![\w.+-])")
    lines = last_stage.split("\n")
    found = [i for i, line in enumerate(lines) if not line.lstrip().startswith("#") and word.search(line)]
    assert found, f"{package} is not in the final stage of {dockerfile}"
    lines[found[0]] = word.sub("", lines[found[0]], count=1)
    copy = tmp_path / "Dockerfile"
    copy.write_text(head + sep + "\n".join(lines))
    assert package not in installed_packages(copy)
    return copy


@pytest.mark.parametrize("package, tools", [
    ("xfsprogs", ["mkfs.xfs", "xfs_growfs"]),
    ("e2fsprogs", ["mkfs.ext4", "resize2fs"]),
    ("util-linux", ["blkid"]),
    ("lvm2", ["lvm"]),
    ("thin-provisioning-tools", ["lvm"]),
])
def test_the_tool_check_names_a_package_taken_out(tmp_path, package, tools):
    problems = tool_problems(dockerfile=_without(DOCKERFILE, package, tmp_path))
    for tool in tools:
        assert any(f"{tool!r}" in p and f"{package!r}" in p for p in problems), (
            f"without {package}, the check does not name {tool}: {problems}")


def test_the_tool_check_names_a_tool_missing_from_the_packages_map(tmp_path):
    sources = tmp_path / "Sources"
    shutil.copytree(SOURCES, sources, ignore=shutil.ignore_patterns("CSIProto", "TargetProto"))
    (sources / "Mounting" / "Swap.swift").write_text(
        'func swap(runner: CommandRunner, device: String) async throws {\n'
        '  _ = try await runner.run(\n    "mkswap", [device], timeout: .seconds(30))\n'
        '  let helper = "swapon"\n  _ = try await runner.run(helper, [device], timeout: .seconds(30))\n'
        '}\n')
    problems = tool_problems(sources=sources)
    for tool in ("mkswap", "swapon"):
        assert any(f"{tool!r}" in p and "CommandRunner.packages" in p for p in problems), (tool, problems)
    assert any("Swap.swift:2 " in p and "mkswap" in p for p in problems), problems
    assert any("Swap.swift:5 " in p and "swapon" in p for p in problems), problems


def test_the_tool_check_names_a_package_missing_from_the_final_stage_only(tmp_path):
    """A package installed in the build stage does not count for the runtime stage."""
    both = tmp_path / "both-stages.Dockerfile"
    both.write_text(DOCKERFILE.read_text().replace(" libnvme-dev ", " libnvme-dev xfsprogs ", 1))
    assert "xfsprogs" in both.read_text().split("\nFROM ")[1]
    problems = tool_problems(dockerfile=_without(both, "xfsprogs", tmp_path))
    assert any("'xfsprogs'" in p for p in problems), problems


def test_the_library_check_names_a_package_taken_out(nvme_csi, tmp_path):
    _needs_debian_12()
    problems = library_problems(nvme_csi, dockerfile=_without(DOCKERFILE, "libnvme1", tmp_path))
    assert any(p.startswith("libnvme.so.1 ") and "'libnvme1'" in p for p in problems), problems
    # libnvme1 brought json-c and OpenSSL as well; nothing in bookworm-slim does.
    assert any(p.startswith("libjson-c.so.5 ") and "'libjson-c5'" in p for p in problems), problems
