#!/bin/sh
# The broker's users (compose/mosquitto/passwd/passwd, hashes made by mosquitto_passwd in the
# broker's own image); a running broker reloads the file and the ACL at once (SIGHUP).
#
#   mqtt-user.sh set USER [FILE]   set USER's password: the one in FILE, or a new random one,
#                                  printed once (put it in the device's vault, see the README)
#   mqtt-user.sh delete USER       the user can no longer connect (sessions end at reconnect)
#   mqtt-user.sh services          soclab-bridge and soclab-telegraf, from compose/secrets/
#   mqtt-user.sh operator NAME [FILE]   the operator account operator/NAME: its ACL block (once;
#                                  commit the ACL) and its password, as for `set`
#   mqtt-user.sh acl operator NAME print the ACL block of operator/NAME (the tests use it)
#
# A device's USER is its topic prefix, e.g. lab1/pi-01/mppt (the ACL keys on it).
set -eu
compose_dir="$(cd "$(dirname "$0")/.." && pwd)"
cd "$compose_dir"
mkdir -p mosquitto/passwd
[ -e mosquitto/passwd/passwd ] || : > mosquitto/passwd/passwd

in_broker() { # shell command run in the broker's image, as root, with the password on stdin
    docker compose run --rm --no-deps -T --entrypoint sh mosquitto -c "$1" sh "$2"
}

reload() {
    if [ -n "$(docker compose ps --quiet mosquitto 2>/dev/null)" ]; then
        docker compose kill --signal SIGHUP mosquitto >/dev/null
        echo "broker reloaded"
    fi
}

operator_block() { # the ACL lines of operator/NAME
    printf 'user operator/%s\ntopic write soclab/+/+/+/cmd\ntopic read soclab/#\ntopic read soclab-bridge/#\n' "$1"
}

check_name() {
    case "$1" in
        ""|*[!a-z0-9_-]*) echo "operator names are lower-case letters, digits, - and _: got '$1'" >&2; exit 2 ;;
    esac
}

fix_owner='chown mosquitto:mosquitto /mosquitto/passwd/passwd && chmod 0600 /mosquitto/passwd/passwd'

set_password() { # user, file with the password
    in_broker "mosquitto_passwd -b /mosquitto/passwd/passwd \"\$1\" \"\$(cat)\" && $fix_owner" "$1" < "$2"
}

case "${1:-}" in
    set)
        [ $# -ge 2 ] || { sed -n '4,16p' "$0"; exit 2; }
        user="$2"
        if [ $# -ge 3 ]; then
            set_password "$user" "$3"
        else
            tmp="$(mktemp)"
            trap 'rm -f "$tmp"' EXIT
            openssl rand -base64 48 | tr -d '/+=\n' | cut -c 1-32 > "$tmp"
            set_password "$user" "$tmp"
            echo "password of $user (shown once): $(cat "$tmp")"
        fi
        reload
        ;;
    delete)
        [ $# -eq 2 ] || { sed -n '4,16p' "$0"; exit 2; }
        in_broker "mosquitto_passwd -D /mosquitto/passwd/passwd \"\$1\" && $fix_owner" "$2" < /dev/null
        reload
        ;;
    operator)
        [ $# -ge 2 ] || { sed -n '4,16p' "$0"; exit 2; }
        check_name "$2"
        if ! grep -qx "user operator/$2" mosquitto/config/acl; then
            { echo; operator_block "$2"; } >> mosquitto/config/acl
            echo "ACL: added operator/$2 (commit mosquitto/config/acl)"
        fi
        shift
        set -- set "operator/$@"
        exec "$0" "$@"
        ;;
    acl)
        [ $# -eq 3 ] && [ "$2" = operator ] || { sed -n '4,16p' "$0"; exit 2; }
        check_name "$3"
        operator_block "$3"
        ;;
    services)
        set_password soclab-bridge secrets/mqtt_bridge_password
        set_password soclab-telegraf secrets/mqtt_telegraf_password
        reload
        ;;
    *)
        sed -n '4,16p' "$0"
        exit 2
        ;;
esac
