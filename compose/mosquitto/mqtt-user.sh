#!/bin/sh
# The broker's users (compose/mosquitto/passwd/passwd, hashes made by mosquitto_passwd in the
# broker's own image); a running broker reloads the file and the ACL at once (SIGHUP).
#
#   mqtt-user.sh set USER [FILE]   set USER's password: the one in FILE, or a new random one,
#                                  printed once (put it in the device's vault, see the README)
#   mqtt-user.sh delete USER       the user can no longer connect (sessions end at reconnect)
#   mqtt-user.sh services          soclab-bridge, soclab-telegraf and soclab-health (the bridge's
#                                  health check), from compose/secrets/
#
# A device's USER is its topic prefix, e.g. lab1/pi-01/mppt (the ACL keys on it).
set -eu
compose_dir="$(cd "$(dirname "$0")/.." && pwd)"
usage() { sed -n '4,11p' "$compose_dir/mosquitto/mqtt-user.sh"; exit 2; }
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

fix_owner='chown mosquitto:mosquitto /mosquitto/passwd/passwd && chmod 0600 /mosquitto/passwd/passwd'

set_password() { # user, file with the password
    in_broker "mosquitto_passwd -b /mosquitto/passwd/passwd \"\$1\" \"\$(cat)\" && $fix_owner" "$1" < "$2"
}

case "${1:-}" in
    set)
        [ $# -ge 2 ] || usage
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
        [ $# -eq 2 ] || usage
        in_broker "mosquitto_passwd -D /mosquitto/passwd/passwd \"\$1\" && $fix_owner" "$2" < /dev/null
        reload
        ;;
    services)
        set_password soclab-bridge secrets/mqtt_bridge_password
        set_password soclab-telegraf secrets/mqtt_telegraf_password
        set_password soclab-health secrets/mqtt_health_password
        reload
        ;;
    *)
        usage
        ;;
esac
