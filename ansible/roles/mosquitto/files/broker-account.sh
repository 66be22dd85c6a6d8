#!/bin/sh
# broker-account.sh PASSWD USER SECRET_FILE: give USER a broker account in the Mosquitto
# password file PASSWD, with a random password kept in SECRET_FILE (root:cybernetic 0640),
# both made once. The password never appears on a command line: it is written to a private
# temporary file that mosquitto_passwd -U hashes in place. Prints "created" when it added it.
set -eu
passwd=$1 user=$2 secret=$3
umask 077
if [ ! -s "$secret" ]; then
    head -c 32 /dev/urandom | base64 | tr -d '\n/+=' > "$secret.new"
    chown root:cybernetic "$secret.new"
    chmod 0640 "$secret.new"
    mv "$secret.new" "$secret"
    grep -v "^$user:" "$passwd" > "$passwd.new" || true
    cat "$passwd.new" > "$passwd"
    rm -f "$passwd.new"
fi
if ! grep -q "^$user:" "$passwd"; then
    tmp=$(mktemp)
    printf '%s:%s\n' "$user" "$(cat "$secret")" > "$tmp"
    mosquitto_passwd -U "$tmp"
    cat "$tmp" >> "$passwd"
    rm -f "$tmp"
    echo created
fi
