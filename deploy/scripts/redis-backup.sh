#!/usr/bin/env bash
# A consistent snapshot of Kefu's Redis, taken over the network (redis-cli --rdb: Redis forks and streams an RDB
# file, so this works the same for a local server, a container or a pod behind `kubectl port-forward`), compressed
# into DEST_DIR with the time in its name; the newest KEEP snapshots stay. Copy DEST_DIR off the host afterwards
# (rsync, restic, an object store): a backup on the same disk as Redis is no backup.
#
#   redis-backup.sh DEST_DIR                      # REDIS_URL from the environment, default redis://127.0.0.1:6379/0
#   REDIS_URL=redis://:password@10.0.0.5:6379/0 KEEP=30 redis-backup.sh /var/backups/kefu
#   cron: 17 3 * * *  kefu-backup  /opt/kefu/deploy/scripts/redis-backup.sh /var/backups/kefu && rsync -a /var/backups/kefu/ backup-host:kefu/
#
# Restore: stop the bot(s) and Redis, put the snapshot (gunzipped) as dump.rdb in Redis's --dir with appendonly
# switched off for that one start, start Redis, `redis-cli CONFIG SET appendonly yes` (it writes a fresh AOF from
# the data), then start the bots again. docs/operations.md has the details.
set -euo pipefail
umask 077   # the snapshot holds conversations

usage() {
    echo "usage: $0 DEST_DIR   (env: REDIS_URL, KEEP=14)" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
dest=$1
keep=${KEEP:-14}
url=${REDIS_URL:-redis://127.0.0.1:6379/0}
[[ $keep =~ ^[0-9]+$ && $keep -ge 1 ]] || { echo "KEEP must be a positive integer, got '$keep'" >&2; exit 2; }
command -v redis-cli >/dev/null || { echo "redis-cli is not installed (Debian: apt-get install redis-tools)" >&2; exit 1; }

mkdir -p -- "$dest"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
partial=$(mktemp -- "$dest/.kefu-redis-$stamp.XXXXXX")
trap 'rm -f -- "$partial"' EXIT

# A password is better given as REDISCLI_AUTH (redis-cli reads it) than inside REDIS_URL, where `ps` shows it.
redis-cli -u "$url" --no-auth-warning --rdb "$partial" >&2
[[ -s $partial ]] || { echo "redis-cli wrote an empty snapshot" >&2; exit 1; }
gzip -9 --stdout -- "$partial" > "$partial.gz"
mv -- "$partial.gz" "$dest/kefu-redis-$stamp.rdb.gz"
echo "$dest/kefu-redis-$stamp.rdb.gz"

# Keep the newest $keep snapshots (names sort by time).
mapfile -t old < <(find "$dest" -maxdepth 1 -name 'kefu-redis-*.rdb.gz' -type f | sort | head -n "-$keep")
if (( ${#old[@]} > 0 )); then
    rm -f -- "${old[@]}"
fi
