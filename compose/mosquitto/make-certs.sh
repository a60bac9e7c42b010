#!/usr/bin/env bash
# The project's own certificate authority for MQTT over TLS (openssl, EC P-256, SHA-256).
#
#   make-certs.sh [-d PKI_DIR] ca                  the CA: PKI_DIR/ca.key (stays here) and ca.crt
#   make-certs.sh [-d PKI_DIR] server NAME...      the broker: PKI_DIR/server/{server.key,server.crt,ca.crt}
#                                                  NAME: DNS names or IPv4 addresses clients connect to;
#                                                  the first is the subject's CN
#   make-certs.sh [-d PKI_DIR] client USER         one client (a device, soclab-bridge, soclab-telegraf):
#                                                  PKI_DIR/clients/<USER with / as .>/{client.key,client.crt,ca.crt}
#
# PKI_DIR defaults to compose/pki (ignored by git). Nothing is ever overwritten: to re-issue a
# server or client certificate, delete its folder first (the README's server section says when).
# Each output folder is what one party needs: compose mounts server/ into the broker and
# clients/soclab-bridge/ into the bridge; a device gets its folder through Ansible.
#
# PKI_DIR is made 0700, ca.key 0600. The server's and clients' keys are 0644 so that the
# containers' own users (not the administrator's uid) can read them through their bind mounts;
# the 0700 folder keeps other users of the host out.
set -euo pipefail

CA_DAYS=3650
LEAF_DAYS=825
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pki="$here/../pki"

usage() {
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

die() {
    echo "make-certs.sh: $*" >&2
    exit 1
}

new_key() { # file
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

subject_cn() { # name -> "/CN=name" with "/" escaped for -subj
    printf '/CN=%s' "$(printf '%s' "$1" | sed 's#/#\\/#g')"
}

sign() { # key, cn, extensions, out
    local csr
    csr="$(mktemp)"
    openssl req -new -key "$1" -subj "$(subject_cn "$2")" -out "$csr"
    openssl x509 -req -in "$csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
        -days "$LEAF_DAYS" -sha256 -extfile <(printf '%s\n' "$3") -out "$4" 2>/dev/null
    rm -f "$csr"
}

need_ca() {
    [[ -f "$pki/ca.key" && -f "$pki/ca.crt" ]] || die "no CA in $pki: run '$0 -d $pki ca' first"
}

fresh_dir() { # dir
    [[ ! -e "$1" ]] || die "$1 exists; delete it first to issue a new certificate"
    mkdir -p "$1"
}

make_ca() {
    [[ ! -e "$pki/ca.key" ]] || die "$pki/ca.key exists; a new CA would invalidate every certificate"
    (umask 077 && new_key "$pki/ca.key")
    openssl req -new -x509 -key "$pki/ca.key" -subj "/CN=soclab MQTT CA" -days "$CA_DAYS" -sha256 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$pki/ca.crt"
    echo "CA: $pki/ca.crt (private key $pki/ca.key: keep it off the servers)"
}

make_server() {
    (($# >= 1)) || usage
    need_ca
    local out="$pki/server" san="" name
    for name in "$@"; do
        if [[ "$name" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
            san+="${san:+,}IP:$name"
        else
            san+="${san:+,}DNS:$name"
        fi
    done
    fresh_dir "$out"
    new_key "$out/server.key"
    sign "$out/server.key" "$1" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san" "$out/server.crt"
    cp "$pki/ca.crt" "$out/ca.crt"
    chmod 0644 "$out/server.key"
    echo "server: $out ($san)"
}

make_client() {
    (($# == 1)) || usage
    [[ "$1" =~ ^[a-z0-9][a-z0-9_/-]*$ ]] || die "user name '$1': lower-case letters, digits, '-', '_', '/'"
    need_ca
    local out
    out="$pki/clients/$(printf '%s' "$1" | tr '/' '.')"
    fresh_dir "$out"
    new_key "$out/client.key"
    sign "$out/client.key" "$1" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth" "$out/client.crt"
    cp "$pki/ca.crt" "$out/ca.crt"
    chmod 0644 "$out/client.key"
    echo "client $1: $out"
}

while getopts "d:h" opt; do
    case "$opt" in
        d) pki="$OPTARG" ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
(($# >= 1)) || usage
mkdir -p "$pki"
chmod 0700 "$pki"
pki="$(cd "$pki" && pwd)"
command="$1"
shift
case "$command" in
    ca) make_ca ;;
    server) make_server "$@" ;;
    client) make_client "$@" ;;
    *) usage ;;
esac
