#!/bin/sh
# Refuses to let the stack start (exit 1) while a secret or a setting is missing, empty, short or
# still the placeholder CHANGE_ME; compose runs it first (service secrets-check) and every other
# service waits for it to succeed. It names what is wrong, never a value.
#
#   SOCLAB_REQUIRED_SECRETS   names of Docker secrets, read in $SOCLAB_SECRETS_DIR (/run/secrets)
#   SOCLAB_REQUIRED_FILES     files that must exist and not be empty (certificates, password file)
#   SOCLAB_CHECKED_SETTINGS   names of environment variables (from compose/.env)
set -u
dir="${SOCLAB_SECRETS_DIR:-/run/secrets}"
min_length=16
failed=0

refuse() {
    echo "secrets-check: $*" >&2
    failed=1
}

for name in ${SOCLAB_REQUIRED_SECRETS:-}; do
    file="$dir/$name"
    if [ ! -s "$file" ]; then
        refuse "secret $name is missing or empty (compose/secrets/$name; ./init-secrets.sh makes it)"
    elif grep -q CHANGE_ME "$file"; then
        refuse "secret $name is still the placeholder CHANGE_ME"
    elif [ "$(tr -d '\n' < "$file" | wc -c)" -lt "$min_length" ]; then
        refuse "secret $name is shorter than $min_length characters"
    fi
done

for path in ${SOCLAB_REQUIRED_FILES:-}; do
    [ -s "$path" ] || refuse "file $path is missing or empty (see the README's server section)"
done

for variable in ${SOCLAB_CHECKED_SETTINGS:-}; do
    value="$(printenv "$variable" || true)"
    case "$value" in
        "") refuse "setting $variable is empty (compose/.env)" ;;
        *CHANGE_ME*) refuse "setting $variable is still CHANGE_ME (compose/.env)" ;;
    esac
done

[ "$failed" -eq 0 ] && echo "secrets-check: every secret, file and setting is there"
exit "$failed"
