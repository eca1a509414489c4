#!/usr/bin/env bash
# Telegram's side of the webhook, from an env file such as /etc/kefu/kefu.env or deploy/.env.
#
#   webhook.sh ENV_FILE info      # getWebhookInfo: url, pending_update_count, last_error_date/_message, ...
#   webhook.sh ENV_FILE set       # setWebhook to WEBHOOK_URL with WEBHOOK_SECRET (what the bot does at every start)
#   webhook.sh ENV_FILE delete    # deleteWebhook (pending updates are kept); for long polling
#
# Moving the webhook to a new URL: make the new place serve the path with TLS, change WEBHOOK_URL (and nginx or the
# Ingress) to it, run `set` or restart the bots (they call setWebhook themselves), and check with `info`. Updates
# that Telegram could not deliver yet go to the new URL. The token and the secret never appear on a command line:
# curl reads them from a private temporary config file.
set -euo pipefail

usage() {
    echo "usage: $0 ENV_FILE info|set|delete" >&2
    exit 2
}

[[ $# -eq 2 ]] || usage
env_file=$1
action=$2
[[ -r $env_file ]] || { echo "cannot read $env_file" >&2; exit 2; }

# The env file holds plain NAME=value lines (the format systemd and docker compose read as well).
set -a
# shellcheck source=/dev/null
. "$env_file"
set +a

: "${TELEGRAM_BOT_TOKEN:?TELEGRAM_BOT_TOKEN is not set in $env_file}"
[[ $TELEGRAM_BOT_TOKEN =~ ^[0-9]+:[A-Za-z0-9_-]+$ ]] || { echo "TELEGRAM_BOT_TOKEN does not look like 123456:ABC..." >&2; exit 2; }
api=${TELEGRAM_API_BASE:-https://api.telegram.org}
api=${api%/}

config=$(mktemp)   # mode 0600
trap 'rm -f -- "$config"' EXIT

call() {   # call METHOD: POST to the Bot API with what "$config" holds besides the URL
    printf 'url = "%s/bot%s/%s"\n' "$api" "$TELEGRAM_BOT_TOKEN" "$1" >> "$config"
    curl --silent --show-error --fail-with-body --max-time 30 --request POST --config "$config"
    echo
}

case $action in
    info)
        call getWebhookInfo
        ;;
    set)
        : "${WEBHOOK_URL:?WEBHOOK_URL is not set in $env_file}"
        : "${WEBHOOK_SECRET:?WEBHOOK_SECRET is not set in $env_file}"
        [[ $WEBHOOK_URL =~ ^https://[^[:space:]\"\\]+$ ]] || { echo "WEBHOOK_URL must be an https:// URL" >&2; exit 2; }
        [[ $WEBHOOK_SECRET =~ ^[A-Za-z0-9_-]{1,256}$ ]] || { echo "WEBHOOK_SECRET: 1-256 of A-Z a-z 0-9 _ -" >&2; exit 2; }
        printf 'data-urlencode = "url=%s"\ndata-urlencode = "secret_token=%s"\n' "$WEBHOOK_URL" "$WEBHOOK_SECRET" > "$config"
        call setWebhook
        ;;
    delete)
        call deleteWebhook
        ;;
    *)
        usage
        ;;
esac
