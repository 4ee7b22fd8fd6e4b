#!/usr/bin/env bash
# TLS and SuperNode authentication material for a fedpafi deployment (development CA).
#
#   deploy/generate_certs.sh [--nodes N] [--out DIR] [--san DNS:link.example.org,IP:10.0.0.5]
#
# Writes into DIR (default deploy/certs, git-ignored):
#   ca.crt, ca.key                 a self-signed CA; ca.crt is what clients trust
#   server.pem, server.key         the SuperLink's certificate, signed by the CA, valid for
#                                  superlink, localhost, 127.0.0.1 and every --san entry
#   supernode-<i>.key, .pub        one ECDSA key pair per SuperNode (OpenSSH format, as
#                                  Flower expects); register each .pub with the SuperLink
# Existing files are kept unless --force is given, so a registered key is never replaced.
set -euo pipefail

nodes=4
out="$(cd "$(dirname "$0")" && pwd)/certs"
sans=""
force=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --san) sans="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "generate_certs.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if ! [[ "$nodes" =~ ^[1-9][0-9]*$ ]]; then
  echo "generate_certs.sh: --nodes needs a positive integer, got '$nodes'" >&2; exit 2
fi
for tool in openssl ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "generate_certs.sh: '$tool' is required" >&2; exit 2; }
done
mkdir -p "$out"
cd "$out"
umask 077

if [[ $force == 1 || ! -f ca.crt ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -sha256 -days 365 -nodes -keyout ca.key -out ca.crt \
    -subj "/CN=fedpafi development CA" 2>/dev/null
  rm -f server.pem  # a new CA needs a new server certificate
fi
if [[ $force == 1 || ! -f server.pem ]]; then
  alt="DNS:superlink,DNS:localhost,IP:127.0.0.1${sans:+,$sans}"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-384 -sha256 -nodes -keyout server.key -out server.csr \
    -subj "/CN=superlink" 2>/dev/null
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
    -sha256 -out server.pem \
    -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\n' "$alt") 2>/dev/null
  rm -f server.csr ca.srl
fi
for ((i = 0; i < nodes; i++)); do
  key="supernode-$i.key"
  if [[ $force == 1 || ! -f $key ]]; then
    rm -f "$key" "$key.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$i" -f "$key"
    mv "$key.pub" "supernode-$i.pub"
  fi
done
chmod 644 ca.crt server.pem supernode-*.pub
echo "certificates and $nodes SuperNode key pairs in $out"
