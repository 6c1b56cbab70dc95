"""Fixtures shared by the deployment checks, and a plain closing line."""

from __future__ import annotations

import pytest

import deploylib

_rendered: dict[str, list[dict]] = {}


def rendered(kustomization: str) -> list[dict]:
    """The objects `kubectl kustomize` prints for one kustomization (cached)."""
    if kustomization not in _rendered:
        _rendered[kustomization] = deploylib.render(kustomization)
    return _rendered[kustomization]


@pytest.fixture(scope="session")
def render():
    return rendered


@pytest.fixture(scope="session")
def nvme_csi():
    """Path of the nvme-csi binary the manifests are checked against."""
    return deploylib.nvme_csi_bin()


# --- a closing line any CI log reader understands ---------------------------------

_counts = {"passed": 0, "failed": 0, "skipped": 0}


def pytest_runtest_logreport(report):
    if report.when == "call":
        if report.passed:
            _counts["passed"] += 1
        elif report.failed:
            _counts["failed"] += 1
        elif report.skipped:
            _counts["skipped"] += 1
    elif report.failed:  # setup or teardown errors
        _counts["failed"] += 1
    elif report.skipped and report.when == "setup":
        _counts["skipped"] += 1


def pytest_unconfigure(config):
    if getattr(config.option, "collectonly", False):
        return
    print(f"\ndeploy: {_counts['passed']} passed, {_counts['failed']} failed, {_counts['skipped']} skipped")
