#!/usr/bin/env bash
# training.export --format pt2 compiles with AOTInductor, which needs a C++ compiler at export time (serving does
# not): $CXX if set, else g++, as torch looks for it. Install g++ through apt when we can.
set -euo pipefail
CXX_NAME="${CXX:-g++}"
if command -v "$CXX_NAME" >/dev/null 2>&1 && "$CXX_NAME" --version >/dev/null 2>&1; then
  exit 0
fi
echo "C++ compiler $CXX_NAME not found (export --format pt2 needs one); trying: apt-get install g++" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if [ -z "${CXX:-}" ] && command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq g++
  command -v g++ >/dev/null 2>&1 && exit 0
fi
echo "error: a C++ compiler is required to export --format pt2; install g++ (apt-get install g++) or set CXX and retry" >&2
exit 1
