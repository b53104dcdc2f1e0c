#!/usr/bin/env bash
# Programs that only the tests use (`make test` runs this before pytest), installed through apt when we can:
#   kubectl >= 1.27 (kustomize v5)  tests/test_k8s.py renders the kustomize overlays with `kubectl kustomize`
#   nginx                           tests/live/test_auth_sidecar.py runs the Kubernetes auth sidecar for real
# Under CI=true a tool still missing afterwards is an error: one line naming it, exit 1 (a CI run must not pass
# by skipping what it could not install). Elsewhere it is a warning and the tests that need it skip with a reason.
# Debian's own kubectl (package kubernetes-client: 1.20 in bookworm) is too old for the overlays: kubectl comes
# from a source that has a `kubectl` package (pkgs.k8s.io, Google Cloud's) or from https://kubernetes.io/docs/tasks/tools/.
set -uo pipefail

have_nginx() { command -v nginx > /dev/null 2>&1 || [ -x /usr/sbin/nginx ] || [ -x /usr/local/sbin/nginx ]; }
# kubectl prints its kustomize version since 1.24; v5 since 1.27.
kustomize_major() { kubectl version --client 2> /dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p' | head -n 1; }
have_kubectl() { command -v kubectl > /dev/null 2>&1 && [ "$(kustomize_major)" -ge 5 ] 2> /dev/null; }
# Whether an apt source offers a package (the candidate of `apt-cache policy`).
apt_offers() { apt-cache policy "$1" 2> /dev/null | grep -q 'Candidate: [^(]'; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
can_apt() { command -v apt-get > /dev/null 2>&1 && { [ -z "$SUDO" ] || sudo -n true 2> /dev/null; }; }
updated=""
apt_update() {  # once per run
  [ -n "$updated" ] || $SUDO apt-get update -qq > /dev/null 2>&1
  updated=1
}
apt_install() {  # apt_install PACKAGE: quietly, from fresh package lists; its exit status
  apt_update
  echo "installing $1 through apt (for the tests)" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$1" > /dev/null 2>&1
}

if ! have_nginx && can_apt; then
  apt_install nginx-light || apt_install nginx  # nginx-light: Debian 12 and older; later releases ship nginx
fi
if ! have_kubectl && can_apt; then
  apt_offers kubectl || apt_update
  ! apt_offers kubectl || apt_install kubectl
fi

missing=()
have_nginx || missing+=("nginx (apt-get install nginx-light) for tests/live/test_auth_sidecar.py")
if ! have_kubectl; then
  found=""
  command -v kubectl > /dev/null 2>&1 && found=", found $(kubectl version --client 2> /dev/null | head -n 1)"
  missing+=("kubectl >= 1.27 with kustomize v5${found} for tests/test_k8s.py")
fi
[ ${#missing[@]} -eq 0 ] && exit 0
list=$(printf '%s; ' "${missing[@]}")
list=${list%; }
if [ "${CI:-}" = "true" ]; then
  echo "error: test tools missing (CI=true): $list" >&2
  exit 1
fi
echo "warning: test tools missing, the tests that need them will skip: $list" >&2
exit 0
