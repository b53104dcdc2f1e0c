#!/usr/bin/env bash
# Tools only the tests use, installed through apt when we can (best effort: without them the tests that
# need them skip and say why). nginx: tests/live/test_auth_sidecar.py runs the Kubernetes auth sidecar's
# configuration for real in front of a live TorchServe.
set -uo pipefail
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
  echo "nginx not found (the auth sidecar test uses it); trying: apt-get install nginx-light" >&2
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light >/dev/null \
    || echo "warning: nginx could not be installed; tests/live/test_auth_sidecar.py will skip" >&2
fi
exit 0
