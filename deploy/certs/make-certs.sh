#!/usr/bin/env bash
# Makes a CA and the certificates of the target API's mutual TLS, for clusters without
# cert-manager (docs/security.md) and for the tests. Each identity gets a directory with
# the Secret's keys (ca.crt, tls.crt, tls.key):
#   target/      server certificate, DNS name nvme-csi-target (the controller checks it)
#   controller/  client certificate, DNS name nvme-csi-controller (may call everything)
#   reader/      client certificate, DNS name nvme-csi-reader (may only read)
# ca.key stays in DIR: keep it offline; it signs renewals (--renew reuses it).
#
# usage: deploy/certs/make-certs.sh DIR [--days N] [--renew] [--name IDENTITY=DNSNAME ...]
set -euo pipefail

usage() { echo "usage: $0 DIR [--days N] [--renew] [--name IDENTITY=DNSNAME ...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
dir=$1; shift
days=365 renew=false
declare -A names=([target]=nvme-csi-target [controller]=nvme-csi-controller [reader]=nvme-csi-reader)
while [ $# -gt 0 ]; do
  case $1 in
    --days) days=$2; shift 2 ;;
    --renew) renew=true; shift ;;
    --name) names[${2%%=*}]=${2#*=}; shift 2 ;;
    *) usage ;;
  esac
done
command -v openssl >/dev/null || { echo "$0: openssl is not installed" >&2; exit 1; }
mkdir -p "$dir"
umask 077
log=$dir/.openssl.log
# openssl's complaints are shown only when it fails.
ossl() { openssl "$@" 2>>"$log" || { cat "$log" >&2; echo "$0: openssl $1 failed" >&2; exit 1; }; }
: >"$log"

if ! $renew || [ ! -e "$dir/ca.key" ]; then
  ossl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/ca.key" \
    -out "$dir/ca.crt" -days $((days * 3)) -subj "/CN=nvme-csi CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

for identity in "${!names[@]}"; do
  dns=${names[$identity]}
  usage=clientAuth; [ "$identity" = target ] && usage=serverAuth
  out=$dir/$identity; mkdir -p "$out"
  # Written beside, then renamed: a reader of the directory never sees half a pair.
  ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$out/.tls.key" \
    -out "$out/.tls.csr" -subj "/CN=$dns"
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=%s\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' \
    "$dns" "$usage" >"$out/.tls.ext"
  ossl x509 -req -in "$out/.tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$out/.tls.crt" -days "$days" -extfile "$out/.tls.ext"
  rm -f "$out/.tls.csr" "$out/.tls.ext"
  cp "$dir/ca.crt" "$out/ca.crt"
  mv "$out/.tls.key" "$out/tls.key"
  mv "$out/.tls.crt" "$out/tls.crt"
done
rm -f "$dir/ca.srl" "$log"
echo "certificates in $dir: ${!names[*]}"
