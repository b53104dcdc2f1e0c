#!/bin/sh
# Runs before the nginx image renders its templates (/docker-entrypoint.d/05-check-token.sh; the image's
# entrypoint stops at the first script that fails). The token is pasted into the nginx configuration, so it must
# be there, long enough to guess never, and made only of characters that cannot end or alter the quoted string
# it sits in: `openssl rand -hex 32` (64 characters) qualifies. Nothing here prints the token.
set -eu
token="${TEXTCLF_TOKEN:-}"
if [ "${#token}" -lt 32 ]; then
    echo "05-check-token.sh: TEXTCLF_TOKEN is missing or shorter than 32 characters (Secret textclf-token, key token); refusing to start" >&2
    exit 1
fi
case "$token" in
    *[!A-Za-z0-9_-]*)
        echo "05-check-token.sh: TEXTCLF_TOKEN may only contain A-Z a-z 0-9 _ - (use: openssl rand -hex 32); refusing to start" >&2
        exit 1
        ;;
esac
