#!/bin/sh
# The broker's users (compose/mosquitto/passwd/passwd, hashes made by mosquitto_passwd in the
# broker's own image); a running broker reloads the file and the ACL at once (SIGHUP).
#
#   mqtt-user.sh set USER [FILE]   set USER's password: the one in FILE, or a new random one,
#                                  printed once (put it in the device's vault, see the README)
#   mqtt-user.sh delete USER       the user can no longer connect (sessions end at reconnect)
#   mqtt-user.sh services          soclab-bridge, soclab-telegraf, soclab-health (the bridge's
#                                  health check), from compose/secrets/
#   mqtt-user.sh monitor NAME [FILE]  a read-only account monitor/NAME: its ACL block, then `set`
#   mqtt-user.sh acl-monitor NAME  only the ACL block of monitor/NAME (no broker needed)
#   mqtt-user.sh bridge N [FILE]   a bridge replica's account soclab-bridge-N: ACL block, then `set`
#   mqtt-user.sh acl-bridge N      only the ACL block of soclab-bridge-N (no broker needed)
#
# A device's USER is its topic prefix, e.g. lab1/pi-01/mppt (the ACL keys on it). A monitor
# (soclab watch) is monitor/NAME; the ACL lists each monitor (config/acl, "monitors"), and each
# bridge replica ("bridge replicas"; the replica runs with [bridge] id = N).
set -eu
usage() { sed -n '4,17p' "$script"; exit 2; }
script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
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

acl=mosquitto/config/acl
monitor_marker='# monitors:'

monitor_name() { # NAME is a topic level: lower-case letters, digits, - and _
    printf '%s' "$1" | grep -Eq '^[a-z0-9][a-z0-9_-]{0,62}$' || {
        echo "monitor name '$1' must be [a-z0-9][a-z0-9_-]* (it becomes monitor/$1)" >&2
        exit 2
    }
}

grant_monitor() { # the ACL block of monitor/NAME below the marker line, once
    monitor_name "$1"
    grep -q "^$monitor_marker\$" "$acl" || { echo "$acl has no '$monitor_marker' line" >&2; exit 1; }
    if grep -qx "user monitor/$1" "$acl"; then
        echo "monitor/$1 is already in $acl"
        return
    fi
    tmp_acl="$(mktemp)"
    awk -v marker="$monitor_marker" -v name="$1" '
        { print }
        $0 == marker {
            print "user monitor/" name
            print "topic read soclab/#"
            print "topic read soclab-bridge/+/status"
            print "topic read soclab-bridge/+/deadletter"
            print "topic deny soclab/monitor/" name "/#"
            print ""
        }' "$acl" > "$tmp_acl"
    cat "$tmp_acl" > "$acl" && rm -f "$tmp_acl"
    echo "monitor/$1 added to $acl (commit it where the stack is deployed from)"
}

bridge_marker='# bridge replicas:'

grant_bridge() { # the ACL block of soclab-bridge-N below the marker line, once
    printf '%s' "$1" | grep -Eq '^[a-z0-9][a-z0-9_-]{0,62}$' || {
        echo "replica name '$1' must be [a-z0-9][a-z0-9_-]* (the bridge's id; account soclab-bridge-$1)" >&2
        exit 2
    }
    grep -q "^$bridge_marker\$" "$acl" || { echo "$acl has no '$bridge_marker' line" >&2; exit 1; }
    if grep -qx "user soclab-bridge-$1" "$acl"; then
        echo "soclab-bridge-$1 is already in $acl"
        return
    fi
    tmp_acl="$(mktemp)"
    awk -v marker="$bridge_marker" -v name="$1" '
        { print }
        $0 == marker {
            print "user soclab-bridge-" name
            print "topic read soclab/+/+/+/data"
            print "topic read soclab/+/+/+/status"
            print "topic read soclab/+/+/+/replay"
            print "topic write soclab/+/+/+/deadletter"
            print "topic write soclab/+/+/+/stored"
            print "topic write soclab/+/+/+/replay/stored"
            print "topic write soclab-bridge/" name "/#"
            print ""
        }' "$acl" > "$tmp_acl"
    cat "$tmp_acl" > "$acl" && rm -f "$tmp_acl"
    echo "soclab-bridge-$1 added to $acl (commit it where the stack is deployed from)"
}

revoke_block() { # remove the block of USER: its user line, topic lines and blank line
    tmp_acl="$(mktemp)"
    awk -v user="user $1" '
        $0 == user { skipping = 1; next }
        skipping && /^topic / { next }
        skipping && $0 == "" { skipping = 0; next }
        { skipping = 0; print }' "$acl" > "$tmp_acl"
    cat "$tmp_acl" > "$acl" && rm -f "$tmp_acl"
}

fix_owner='chown mosquitto:mosquitto /mosquitto/passwd/passwd && chmod 0600 /mosquitto/passwd/passwd'

set_password() { # user, file with the password
    in_broker "mosquitto_passwd -b /mosquitto/passwd/passwd \"\$1\" \"\$(cat)\" && $fix_owner" "$1" < "$2"
}

set_user() { # user [file]: that file's password, or a new one printed once
    if [ $# -ge 2 ]; then
        set_password "$1" "$2"
    else
        tmp="$(mktemp)"
        trap 'rm -f "$tmp"' EXIT
        openssl rand -base64 48 | tr -d '/+=\n' | cut -c 1-32 > "$tmp"
        set_password "$1" "$tmp"
        echo "password of $1 (shown once): $(cat "$tmp")"
    fi
    reload
}

case "${1:-}" in
    set)
        [ $# -ge 2 ] || usage
        shift
        set_user "$@"
        ;;
    delete)
        [ $# -eq 2 ] || usage
        case "$2" in monitor/* | soclab-bridge-*) revoke_block "$2" ;; esac
        in_broker "mosquitto_passwd -D /mosquitto/passwd/passwd \"\$1\" && $fix_owner" "$2" < /dev/null
        reload
        ;;
    monitor)
        [ $# -ge 2 ] || usage
        grant_monitor "$2"
        name="$2"
        shift 2
        set_user "monitor/$name" "$@"
        ;;
    acl-monitor)
        [ $# -eq 2 ] || usage
        grant_monitor "$2"
        ;;
    bridge)
        [ $# -ge 2 ] || usage
        grant_bridge "$2"
        name="$2"
        shift 2
        set_user "soclab-bridge-$name" "$@"
        ;;
    acl-bridge)
        [ $# -eq 2 ] || usage
        grant_bridge "$2"
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
