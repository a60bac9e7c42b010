#!/bin/sh
# Makes compose/secrets/ with a new random value for every secret that is not there yet (an
# existing one is never replaced). Run it once on the server, before the first `docker compose up`.
# The folder is 0700 (only you); the files are 0644 so that each container's own user can read
# its bind-mounted secret.
set -eu
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
chmod 0700 "$dir"
for name in influxdb_admin_password influxdb_admin_token grafana_admin_password \
    mqtt_bridge_password mqtt_telegraf_password mqtt_health_password; do
    if [ -s "$dir/$name" ]; then
        echo "kept   $dir/$name"
        continue
    fi
    # No newline at the end: some readers (Telegraf's secret store) would keep it.
    printf '%s' "$(openssl rand -base64 48 | tr -d '/+=\n' | cut -c 1-40)" > "$dir/$name.new"
    chmod 0644 "$dir/$name.new"
    mv "$dir/$name.new" "$dir/$name"
    echo "made   $dir/$name"
done
