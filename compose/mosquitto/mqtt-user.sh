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
#   mqtt-user.sh operator NAME [FILE]  an account operator/NAME that commands every device and
#                                  run controller: its ACL block, then `set`
#   mqtt-user.sh acl-operator NAME only the ACL block of operator/NAME (no broker needed)
#   mqtt-user.sh bridge N [FILE]   a bridge replica's account soclab-bridge-N: ACL block, then `set`
#   mqtt-user.sh acl-bridge N      only the ACL block of soclab-bridge-N (no broker needed)
#
# A device's USER is its topic prefix, e.g. lab1/pi-01/mppt (the ACL keys on it). A monitor
# (soclab watch) is monitor/NAME, an operator (soclab run, soclab cmd) operator/NAME, a bridge
# replica soclab-bridge-N (it runs with [bridge] id = N); the ACL lists each of them (config/acl,
# "monitors", "operators" and "bridge replicas").
set -eu
usage() { sed -n '4,21p' "$script"; exit 2; }
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

role_name() { # ROLE NAME: NAME is a topic level: lower-case letters, digits, - and _
    printf '%s' "$2" | grep -Eq '^[a-z0-9][a-z0-9_-]{0,62}$' || {
        echo "$1 name '$2' must be [a-z0-9][a-z0-9_-]* (it becomes $(role_user "$1" "$2"))" >&2
        exit 2
    }
}

role_user() { # ROLE NAME: the account's user name
    case "$1" in
        bridge) echo "soclab-bridge-$2" ;;
        *) echo "$1/$2" ;;
    esac
}

role_marker() { # ROLE: the ACL line below which its blocks go
    case "$1" in
        bridge) echo "# bridge replicas:" ;;
        *) echo "# $1s:" ;;
    esac
}

role_lines() { # ROLE NAME: the topic lines of ROLE/NAME's block
    case "$1" in
        monitor) printf '%s\n' "topic read soclab/#" "topic read soclab-bridge/+/status" \
                     "topic read soclab-bridge/+/deadletter" "topic deny soclab/monitor/$2/#" ;;
        operator) printf '%s\n' "topic write soclab/+/+/+/cmd" "topic write soclab/+/+/+/replay" "topic read soclab/#" \
                      "topic read soclab-bridge/+/status" "topic read soclab-bridge/+/deadletter" \
                      "topic deny soclab/operator/$2/#" ;;
        # a replica reads and confirms like soclab-bridge, and writes only its own status tree
        bridge) printf '%s\n' "topic read soclab/+/+/+/data" "topic read soclab/+/+/+/status" \
                    "topic read soclab/+/+/+/journal" "topic read soclab/+/+/+/cmd/result" \
                    "topic read soclab/+/+/+/replay" "topic write soclab/+/+/+/deadletter" \
                    "topic write soclab/+/+/+/stored" "topic write soclab/+/+/+/replay/stored" \
                    "topic write soclab-bridge/$2/#" ;;
    esac
}

grant() { # ROLE NAME: the ACL block of ROLE's account NAME below ROLE's marker line, once
    role_name "$1" "$2"
    marker="$(role_marker "$1")"
    user="$(role_user "$1" "$2")"
    grep -q "^$marker\$" "$acl" || { echo "$acl has no '$marker' line" >&2; exit 1; }
    if grep -qx "user $user" "$acl"; then
        echo "$user is already in $acl"
        return
    fi
    tmp_lines="$(mktemp)"
    { echo "user $user"; role_lines "$1" "$2"; echo; } > "$tmp_lines"
    tmp_acl="$(mktemp)"
    awk -v marker="$marker" -v block="$tmp_lines" '
        { print }
        $0 == marker { while ((getline line < block) > 0) print line }' "$acl" > "$tmp_acl"
    cat "$tmp_acl" > "$acl" && rm -f "$tmp_acl" "$tmp_lines"
    echo "$user added to $acl (commit it where the stack is deployed from)"
}

revoke() { # remove the block of USER: its user line, topic lines and blank line
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
        case "$2" in monitor/* | operator/* | soclab-bridge-*) revoke "$2" ;; esac
        in_broker "mosquitto_passwd -D /mosquitto/passwd/passwd \"\$1\" && $fix_owner" "$2" < /dev/null
        reload
        ;;
    monitor|operator|bridge)
        [ $# -ge 2 ] || usage
        grant "$1" "$2"
        user="$(role_user "$1" "$2")"
        shift 2
        set_user "$user" "$@"
        ;;
    acl-monitor|acl-operator|acl-bridge)
        [ $# -eq 2 ] || usage
        grant "${1#acl-}" "$2"
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
