"""(2) Every rendered object is valid for current Kubernetes versions.

Built-in kinds are validated with kubernetes-validate in strict mode (unknown fields
are errors, so a misspelt `mountPropagation` fails). The kinds in CRD_KINDS are
CustomResourceDefinitions that kubernetes-validate has no schema for: the snapshot
kinds (snapshot.storage.k8s.io), cert-manager's Issuer and Certificate
(components/cert-manager) and the Prometheus Operator's ServiceMonitor
(components/monitoring). They are left out of the schema check on purpose, by that
list only, and checked by hand below against the fields of the external-snapshotter
v8, cert-manager v1 and monitoring.coreos.com/v1 CRDs.
"""

from __future__ import annotations

import re

import pytest
import kubernetes_validate

import deploylib
from deploylib import KUBERNETES_VERSIONS, MINIMUM_KUBERNETES
from test_render import KUSTOMIZATIONS

# Kinds without a schema in kubernetes-validate: not schema-checked, each hand-checked
# instead (HAND_CHECKS). Any other kind must pass the schema check.
CRD_KINDS = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"),
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
RESERVED_PREFIX = "csi.storage.k8s.io/"


def _label(obj):
    return f"{obj['apiVersion']} {obj['kind']}/{obj['metadata'].get('name')}"


def check_volume_snapshot_class(obj):
    assert obj["apiVersion"] == "snapshot.storage.k8s.io/v1"
    extra = set(obj) - {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}
    assert not extra, f"{_label(obj)}: unknown fields {sorted(extra)}"
    assert isinstance(obj.get("driver"), str) and obj["driver"], f"{_label(obj)}: driver is required"
    assert obj.get("deletionPolicy") in ("Delete", "Retain"), f"{_label(obj)}: deletionPolicy must be Delete or Retain"
    params = obj.get("parameters", {})
    assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values()), (
        f"{_label(obj)}: parameters must map strings to strings")
    # The driver's CreateSnapshot refuses every parameter but the sidecars' own.
    bad = [k for k in params if not k.startswith(RESERVED_PREFIX)]
    assert not bad, f"{_label(obj)}: nvme-csi snapshots take no parameters, got {bad}"


def check_volume_snapshot(obj):
    assert obj["apiVersion"] == "snapshot.storage.k8s.io/v1"
    extra = set(obj) - {"apiVersion", "kind", "metadata", "spec"}
    assert not extra, f"{_label(obj)}: unknown fields {sorted(extra)}"
    spec = obj.get("spec")
    assert isinstance(spec, dict), f"{_label(obj)}: spec is required"
    extra = set(spec) - {"source", "volumeSnapshotClassName"}
    assert not extra, f"{_label(obj)}: unknown spec fields {sorted(extra)}"
    source = spec.get("source")
    assert isinstance(source, dict), f"{_label(obj)}: spec.source is required"
    keys = set(source)
    assert keys in ({"persistentVolumeClaimName"}, {"volumeSnapshotContentName"}), (
        f"{_label(obj)}: spec.source needs exactly one of persistentVolumeClaimName, volumeSnapshotContentName")
    assert all(isinstance(v, str) and v for v in source.values())
    if "volumeSnapshotClassName" in spec:
        assert isinstance(spec["volumeSnapshotClassName"], str) and spec["volumeSnapshotClassName"]


# cert-manager v1 (cert-manager.io_certificates.yaml, cert-manager.io_issuers.yaml).
ISSUER_TYPES = {"acme", "ca", "selfSigned", "vault", "venafi"}
CERTIFICATE_SPEC = {
    "additionalOutputFormats", "commonName", "dnsNames", "duration", "emailAddresses",
    "encodeUsagesInRequest", "ipAddresses", "isCA", "issuerRef", "keystores", "literalSubject",
    "nameConstraints", "otherNames", "privateKey", "renewBefore", "renewBeforePercentage",
    "revisionHistoryLimit", "secretName", "secretTemplate", "subject", "uris", "usages",
}
KEY_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
}
GO_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")


def _go_duration_hours(value: str) -> float:
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ns|us|µs|ms|s|m|h)", value)) / 3600


def check_issuer(obj):
    assert obj["apiVersion"] == "cert-manager.io/v1"
    extra = set(obj) - {"apiVersion", "kind", "metadata", "spec"}
    assert not extra, f"{_label(obj)}: unknown fields {sorted(extra)}"
    spec = obj.get("spec")
    assert isinstance(spec, dict), f"{_label(obj)}: spec is required"
    unknown = set(spec) - ISSUER_TYPES
    assert not unknown, f"{_label(obj)}: unknown spec fields {sorted(unknown)}"
    assert len(spec) == 1, f"{_label(obj)}: spec needs exactly one of {sorted(ISSUER_TYPES)}"
    if "selfSigned" in spec:
        assert isinstance(spec["selfSigned"], dict) and set(spec["selfSigned"]) <= {"crlDistributionPoints"}
    if "ca" in spec:
        ca = spec["ca"]
        assert isinstance(ca, dict) and set(ca) <= {"secretName", "crlDistributionPoints", "issuingCertificateURLs", "ocspServers"}, (
            f"{_label(obj)}: spec.ca: {ca}")
        assert isinstance(ca.get("secretName"), str) and ca["secretName"], f"{_label(obj)}: spec.ca.secretName is required"


def check_certificate(obj):
    assert obj["apiVersion"] == "cert-manager.io/v1"
    extra = set(obj) - {"apiVersion", "kind", "metadata", "spec"}
    assert not extra, f"{_label(obj)}: unknown fields {sorted(extra)}"
    spec = obj.get("spec")
    assert isinstance(spec, dict), f"{_label(obj)}: spec is required"
    unknown = set(spec) - CERTIFICATE_SPEC
    assert not unknown, f"{_label(obj)}: unknown spec fields {sorted(unknown)}"
    assert isinstance(spec.get("secretName"), str) and spec["secretName"], f"{_label(obj)}: spec.secretName is required"
    ref = spec.get("issuerRef")
    assert isinstance(ref, dict) and set(ref) <= {"name", "kind", "group"} and ref.get("name"), (
        f"{_label(obj)}: spec.issuerRef needs a name (and only kind, group): {ref}")
    for key in ("dnsNames", "uris", "ipAddresses", "emailAddresses"):
        if key in spec:
            assert isinstance(spec[key], list) and all(isinstance(v, str) and v for v in spec[key]), (
                f"{_label(obj)}: spec.{key} must be a list of strings")
    bad = [u for u in spec.get("usages", []) if u not in KEY_USAGES]
    assert not bad, f"{_label(obj)}: unknown usages {bad}"
    if "isCA" in spec:
        assert isinstance(spec["isCA"], bool)
    for key in ("duration", "renewBefore"):
        if key in spec:
            assert isinstance(spec[key], str) and GO_DURATION.fullmatch(spec[key]), (
                f"{_label(obj)}: spec.{key} {spec[key]!r} is not a Go duration (e.g. 2160h)")
    if "duration" in spec and "renewBefore" in spec:
        assert _go_duration_hours(spec["renewBefore"]) < _go_duration_hours(spec["duration"]), (
            f"{_label(obj)}: renewBefore must be shorter than duration")
    key = spec.get("privateKey", {})
    assert isinstance(key, dict) and set(key) <= {"algorithm", "encoding", "rotationPolicy", "size"}, (
        f"{_label(obj)}: spec.privateKey: {key}")
    assert key.get("algorithm", "RSA") in ("RSA", "ECDSA", "Ed25519"), f"{_label(obj)}: privateKey.algorithm"
    assert key.get("encoding", "PKCS1") in ("PKCS1", "PKCS8"), f"{_label(obj)}: privateKey.encoding"
    assert key.get("rotationPolicy", "Always") in ("Never", "Always"), f"{_label(obj)}: privateKey.rotationPolicy"
    if key.get("algorithm") == "ECDSA":
        assert key.get("size", 256) in (256, 384, 521), f"{_label(obj)}: ECDSA size must be 256, 384 or 521"


# Prometheus Operator v0.84 (example/prometheus-operator-crd/
# monitoring.coreos.com_servicemonitors.yaml): every field of spec and of an
# endpoint, so a misspelt one fails; the fields the manifests use are checked further.
SERVICE_MONITOR_SPEC = {
    "attachMetadata", "bodySizeLimit", "convertClassicHistogramsToNHCB", "endpoints", "fallbackScrapeProtocol",
    "jobLabel", "keepDroppedTargets", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
    "namespaceSelector", "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor", "podTargetLabels",
    "sampleLimit", "scrapeClass", "scrapeClassicHistograms", "scrapeProtocols", "selector", "selectorMechanism",
    "targetLabels", "targetLimit",
}
SERVICE_MONITOR_ENDPOINT = {
    "authorization", "basicAuth", "bearerTokenFile", "bearerTokenSecret", "enableHttp2", "filterRunning",
    "followRedirects", "honorLabels", "honorTimestamps", "interval", "metricRelabelings", "noProxy", "oauth2",
    "params", "path", "port", "proxyConnectHeader", "proxyFromEnvironment", "proxyUrl", "relabelings", "scheme",
    "scrapeTimeout", "targetPort", "tlsConfig", "trackTimestampsStaleness",
}
PROMETHEUS_DURATION = re.compile(r"0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")
PORT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?")


def check_service_monitor(obj):
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    extra = set(obj) - {"apiVersion", "kind", "metadata", "spec"}
    assert not extra, f"{_label(obj)}: unknown fields {sorted(extra)}"
    spec = obj.get("spec")
    assert isinstance(spec, dict), f"{_label(obj)}: spec is required"
    unknown = set(spec) - SERVICE_MONITOR_SPEC
    assert not unknown, f"{_label(obj)}: unknown spec fields {sorted(unknown)}"
    selector = spec.get("selector")
    assert isinstance(selector, dict) and set(selector) <= {"matchLabels", "matchExpressions"}, (
        f"{_label(obj)}: spec.selector is required (matchLabels, matchExpressions): {selector}")
    labels = selector.get("matchLabels", {})
    assert isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
    assert labels or selector.get("matchExpressions"), f"{_label(obj)}: an empty selector takes every Service"
    if "namespaceSelector" in spec:
        ns = spec["namespaceSelector"]
        assert isinstance(ns, dict) and set(ns) <= {"any", "matchNames"}, f"{_label(obj)}: spec.namespaceSelector: {ns}"
    endpoints = spec.get("endpoints")
    assert isinstance(endpoints, list) and endpoints, f"{_label(obj)}: spec.endpoints is required"
    for e in endpoints:
        assert isinstance(e, dict), f"{_label(obj)}: an endpoint is not a mapping: {e}"
        unknown = set(e) - SERVICE_MONITOR_ENDPOINT
        assert not unknown, f"{_label(obj)}: unknown endpoint fields {sorted(unknown)}"
        # The Service's port by name (targetPort would bypass the Service's ports).
        assert isinstance(e.get("port"), str) and PORT_NAME.fullmatch(e["port"]), (
            f"{_label(obj)}: an endpoint needs port, a Service port's name: {e}")
        assert "targetPort" not in e, f"{_label(obj)}: name the Service's port (port), not targetPort"
        if "path" in e:
            assert isinstance(e["path"], str) and e["path"].startswith("/"), f"{_label(obj)}: path {e['path']!r}"
        assert e.get("scheme", "http") in ("http", "https"), f"{_label(obj)}: scheme {e.get('scheme')!r}"
        for key in ("interval", "scrapeTimeout"):
            if key in e:
                assert isinstance(e[key], str) and e[key] and PROMETHEUS_DURATION.fullmatch(e[key]), (
                    f"{_label(obj)}: {key} {e[key]!r} is not a Prometheus duration (e.g. 30s)")
        for key in ("honorLabels", "honorTimestamps", "filterRunning", "followRedirects", "enableHttp2"):
            if key in e:
                assert isinstance(e[key], bool), f"{_label(obj)}: {key} must be a boolean"


HAND_CHECKS = {
    "VolumeSnapshotClass": check_volume_snapshot_class,
    "VolumeSnapshot": check_volume_snapshot,
    "Issuer": check_issuer,
    "Certificate": check_certificate,
    "ServiceMonitor": check_service_monitor,
}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_objects_match_the_kubernetes_schemas(kustomization, version, render):
    minimum = MINIMUM_KUBERNETES.get(kustomization)
    if minimum and tuple(map(int, version.split("."))) < tuple(map(int, minimum.split("."))):
        # Not skipped silently: the version it is checked against is asserted to exist.
        assert any(tuple(map(int, v.split("."))) >= tuple(map(int, minimum.split("."))) for v in KUBERNETES_VERSIONS)
        return
    errors = []
    for obj in render(kustomization):
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue  # no schema: checked by hand in test_custom_resources_by_hand
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{_label(obj)}: no schema for Kubernetes {version}: {e.message}")
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path)
            errors.append(f"{_label(obj)}: {where}: {e.message}")
    assert not errors, f"{kustomization} against Kubernetes {version}:\n" + "\n".join(errors)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_custom_resources_by_hand(kustomization, render):
    for obj in render(kustomization):
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            HAND_CHECKS[obj["kind"]](obj)


def test_the_schema_check_catches_a_misspelt_field():
    """The strict schema check really rejects what a typo produces."""
    bad = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "c", "image": "i", "volumeMounts": [
            {"name": "v", "mountPath": "/v", "mountPropogation": "Bidirectional"}]}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_hand_checks_catch_a_bad_snapshot():
    with pytest.raises(AssertionError):
        check_volume_snapshot({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                               "metadata": {"name": "s"}, "spec": {"source": {}}})
    with pytest.raises(AssertionError):
        check_volume_snapshot_class({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                                     "metadata": {"name": "c"}, "driver": "d", "deletionPolicy": "Keep"})


def test_the_hand_checks_catch_a_bad_certificate():
    good = {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "c"},
            "spec": {"secretName": "s", "issuerRef": {"name": "i"}, "duration": "2160h", "renewBefore": "720h",
                     "usages": ["server auth"], "privateKey": {"algorithm": "ECDSA", "size": 256}}}
    check_certificate(good)
    for field, value in [("usages", ["serverAuth"]), ("duration", "90d"), ("renewBefore", "3000h"),
                         ("privateKey", {"algorithm": "ECDSA", "size": 2048}), ("dnsName", ["x"])]:
        bad = {**good, "spec": {**good["spec"], field: value}}
        with pytest.raises(AssertionError):
            check_certificate(bad)
    with pytest.raises(AssertionError):
        check_issuer({"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "i"},
                      "spec": {"ca": {"secret": "x"}}})


def test_the_hand_checks_catch_a_bad_service_monitor():
    good = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "m"},
            "spec": {"selector": {"matchLabels": {"a": "b"}},
                     "endpoints": [{"port": "metrics", "path": "/metrics", "scheme": "http", "interval": "30s"}]}}
    check_service_monitor(good)
    for spec in [{"selector": {}}, {"endpoints": []}, {"endpoint": [{"port": "metrics"}]},
                 {"selector": {"matchLabel": {"a": "b"}}}]:
        with pytest.raises(AssertionError):
            check_service_monitor({**good, "spec": {**good["spec"], **spec}})
    for endpoint in [{"port": 9820}, {"targetPort": "metrics"}, {"port": "metrics", "scheme": "tcp"},
                     {"port": "metrics", "interval": "30 s"}, {"port": "metrics", "honourLabels": True},
                     {"port": "metrics", "path": "metrics"}]:
        with pytest.raises(AssertionError):
            check_service_monitor({**good, "spec": {**good["spec"], "endpoints": [endpoint]}})


def test_every_kind_is_either_validated_or_hand_checked(render):
    for k in KUSTOMIZATIONS:
        for obj in render(k):
            if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
                assert obj["kind"] in HAND_CHECKS
