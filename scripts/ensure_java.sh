#!/usr/bin/env bash
# TorchServe's frontend is Java: need a JRE >= 11. Install OpenJDK 17 through apt when we can.
set -euo pipefail
java_major() { java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'; }
if command -v java >/dev/null 2>&1 && [ "$(java_major)" -ge 11 ] 2>/dev/null; then
  exit 0
fi
echo "Java 11+ not found (TorchServe needs it); trying: apt-get install openjdk-17-jre-headless" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jre-headless
  command -v java >/dev/null 2>&1 && [ "$(java_major)" -ge 11 ] && exit 0
fi
echo "error: Java 11 or newer is required for TorchServe; install a JRE (e.g. openjdk-17-jre-headless) and retry" >&2
exit 1
