"""The troubleshooting tables in docs/operations.md quote the driver's real
messages: every literal part of each quoted message must be in the Swift sources.
`<placeholders>` and `…` stand for what the driver fills in at run time, and so do
the defaults the docs show filled in (/etc/nvme, /sys/kernel/config, …). A message
built from wrapped errors ("a: b") is checked part by part."""

from __future__ import annotations

import re

import pytest

from deploylib import REPO

DOC = REPO / "docs" / "operations.md"
PLACEHOLDER = re.compile(r'"?<[^>]*>"?|"?…"?|: ')
# Run-time values the docs show concretely (longest first).
CONCRETE = [
    ("/sys/kernel/config/nvmet", "<root>"),
    ("/sys/kernel/config", "<configfs>"),
    ("/etc/nvme-csi/targets.json", "<path>"),
    ("/var/lib/nvme-csi", "<dir>"),
    ("/etc/nvme", "<dir>"),
    ("'mkfs.xfs'", "<tool>"),
    ("xfsprogs", "<package>"),
    (":4420", "<port>"),
    ("30 s", "<timeout>"),
    ("(unavailable)", "(<code>)"),
]


def _swift_text() -> str:
    parts = []
    for path in sorted((REPO / "Sources").rglob("*.swift")):
        if "Proto" in path.parts[-2]:
            continue
        parts.append(path.read_text())
    text = "\n".join(parts)
    # Join string literals split with `+` across lines, and unescape quotes.
    text = re.sub(r'"\s*\+\s*"', "", text)
    return text.replace('\\"', '"')


def documented_messages() -> list[str]:
    messages = []
    in_troubleshooting = False
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            in_troubleshooting = line.strip() == "## Troubleshooting"
        if not in_troubleshooting or not line.startswith("| `"):
            continue
        first_cell = line.split(" | ")[0]
        # Short spans are names in passing (`blkid`), not messages.
        messages += [m for m in re.findall(r"`([^`]+)`", first_cell) if len(m) >= 15]
    return messages


MESSAGES = documented_messages()


def test_the_troubleshooting_tables_quote_messages():
    assert len(MESSAGES) >= 30, f"found only {len(MESSAGES)} quoted messages in {DOC}"


@pytest.mark.parametrize("message", MESSAGES)
def test_documented_message_is_in_the_sources(message):
    source = _swift_text()
    generic = message
    for concrete, placeholder in CONCRETE:
        generic = generic.replace(concrete, placeholder)
    fragments = [f.strip() for f in PLACEHOLDER.split(generic) if len(f.strip()) >= 8]
    assert fragments, f"nothing literal to check in {message!r}"
    missing = [f for f in fragments if f not in source]
    assert not missing, f"docs/operations.md quotes {message!r}, but the sources have no {missing}"
