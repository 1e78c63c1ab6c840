#!/usr/bin/env bash
# A local certificate authority and a relay certificate signed by it, for testing with real
# certificate verification (no pinning, no "accept any certificate"). Needs openssl (1.1.1 or 3.x).
#
#   certs/dev-ca.sh [DIR] [NAME...]
#
# DIR defaults to ./certs/dev (ignored by git). NAMEs are extra DNS names or IP addresses for the
# relay certificate, on top of localhost, 127.0.0.1 and ::1. In DIR:
#
#   ca.pem, ca-key.pem   the CA (ECDSA P-256, 10 years), made once and kept: trust ca.pem in
#                        clients (Rust: ServerTrust::Roots; browsers/OS: import it as a root)
#   cert.pem, key.pem    the relay's certificate (ECDSA P-256, 90 days) and key, for
#                        tls.cert_file and tls.key_file; made anew at every run
#
# Running it again keeps the CA and issues a new relay certificate: a running relay picks it up
# within tls.reload_interval_ms (or at SIGHUP), which is how rotation can be rehearsed. Delete DIR
# to start over with a new CA. Never use this CA outside a test machine: its key sits unencrypted
# in DIR.
set -euo pipefail

DIR="${1:-certs/dev}"
shift || true
command -v openssl >/dev/null || { echo "dev-ca.sh: openssl not found" >&2; exit 1; }
mkdir -p "$DIR"
umask 077

# subjectAltName entries: DNS for names, IP for addresses (anything with a ':' or all digits and dots).
san="DNS:localhost,IP:127.0.0.1,IP:::1"
for name in "$@"; do
    if [[ "$name" == *:* || "$name" =~ ^[0-9.]+$ ]]; then
        san="$san,IP:$name"
    else
        san="$san,DNS:$name"
    fi
done

if [ ! -s "$DIR/ca.pem" ] || [ ! -s "$DIR/ca-key.pem" ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$DIR/ca-key.pem"
    openssl req -x509 -new -sha256 -days 3650 -key "$DIR/ca-key.pem" -out "$DIR/ca.pem" \
        -subj "/CN=edgerelay dev CA $(hostname 2>/dev/null || echo local) $(date -u +%Y-%m-%dT%H:%MZ)" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash"
    echo "made a new CA: $DIR/ca.pem"
fi

# The new certificate and key are written aside, then renamed into place (key first), so a relay
# polling the files never loads half of a pair.
tmp="$(mktemp -d "$DIR/.issue.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/ext.cnf" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash
EOF
openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$tmp/key.pem"
openssl req -new -sha256 -key "$tmp/key.pem" -subj "/CN=localhost" -out "$tmp/req.csr"
openssl x509 -req -sha256 -days 90 -in "$tmp/req.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca-key.pem" \
    -CAcreateserial -CAserial "$DIR/ca.srl" -extfile "$tmp/ext.cnf" -out "$tmp/cert.pem" 2>/dev/null
chmod 644 "$tmp/cert.pem" "$DIR/ca.pem"
mv "$tmp/key.pem" "$DIR/key.pem"
mv "$tmp/cert.pem" "$DIR/cert.pem"

echo "relay certificate: $DIR/cert.pem (key $DIR/key.pem) for $san, valid 90 days"
echo "  sha256 $(openssl x509 -in "$DIR/cert.pem" -noout -fingerprint -sha256 | cut -d= -f2)"
echo "trust $DIR/ca.pem in clients; relay config:"
echo "  [tls]"
echo "  cert_file = \"$(cd "$DIR" && pwd)/cert.pem\""
echo "  key_file = \"$(cd "$DIR" && pwd)/key.pem\""
