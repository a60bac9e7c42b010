#!/bin/sh
# Run once by compose (service influxdb-tokens) after InfluxDB is healthy, with the operator token:
# maps the bucket for InfluxQL (DBRP: database = the bucket's name, retention policy "autogen",
# which Grafana's dashboards query) and makes one token per consumer, each for this one bucket:
#
#   bridge    write   -> volume bridge-token   (the bridge's SOCLAB_BRIDGE_INFLUX_TOKEN_FILE)
#   telegraf  write   -> volume telegraf-token (telegraf.conf's secret store "influx")
#   grafana   read    -> volume grafana-token  (the data source's $__file{...})
#
# A token already written is kept, so restarts change nothing. To rotate one: delete it in
# InfluxDB (influx auth delete), delete its volume's file, run this step again (README, Server).
set -eu

export INFLUX_TOKEN
INFLUX_TOKEN="$(cat /run/secrets/influxdb_admin_token)"
org="$SOCLAB_INFLUX_ORG"
bucket="$SOCLAB_INFLUX_BUCKET"

json_value() { # key: the first "key": "value" of a JSON document on stdin
    sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" | head -n 1
}

bucket_id="$(influx bucket list --org "$org" --name "$bucket" --json | json_value id)"
[ -n "$bucket_id" ] || { echo "init-tokens: bucket $bucket not found in $org" >&2; exit 1; }

if [ -z "$(influx v1 dbrp list --org "$org" --bucket-id "$bucket_id" --json | json_value id)" ]; then
    influx v1 dbrp create --org "$org" --bucket-id "$bucket_id" --db "$bucket" --rp autogen --default
fi

make_token() { # consumer, permission flag
    file="/tokens/$1/token"
    if [ -s "$file" ]; then
        echo "init-tokens: $1 keeps its token"
        return
    fi
    token="$(influx auth create --org "$org" --description "soclab-$1" "$2" "$bucket_id" --json | json_value token)"
    [ -n "$token" ] || { echo "init-tokens: no token made for $1" >&2; exit 1; }
    (umask 022 && printf '%s' "$token" > "$file.new" && mv "$file.new" "$file")  # no newline
    echo "init-tokens: made $1's token ($2 on bucket $bucket)"
}

make_token bridge --write-bucket
make_token telegraf --write-bucket
make_token grafana --read-bucket
