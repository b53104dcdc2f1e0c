#!/usr/bin/env bash
# Build (make image) and smoke-test (make image-test) the serving image with podman, on hosts without an
# image registry: the base image is made from the Debian archive, and pip inside the build takes its wheels
# from where the host's pip does. With Docker and Docker Hub, `docker build -f deploy/Dockerfile .` is enough.
#
#   deploy/image.sh build    build $IMAGE (MODELS=a-1.0.mar,b-1.0.mar bakes archives of model-archive/store in)
#   deploy/image.sh test     serve a tiny archive with $IMAGE: healthcheck, predict, register refused, stop
set -euo pipefail
cd "$(dirname "$0")/.."
# Works around these VMs' quirks (ulimits, runc, cgroupfs) without touching the host's own config.
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/containers.conf}"
IMAGE="${IMAGE:-localhost/textclf-torchserve:latest}"
BASE_IMAGE="${BASE_IMAGE:-localhost/debian-base}"
PY="${PY:-.venv/bin/python}"

need() {
  command -v "$1" > /dev/null || { echo "error: $1 not found (apt-get install -y podman runc mmdebstrap)" >&2; exit 2; }
}

# The host pip's effective setting (environment over config files: `pip config list` prints it last).
pip_setting() {
  "$PY" -m pip config list 2> /dev/null | sed -n "s/^[^=]*\.$1='\(.*\)'$/\1/p" | tail -n 1
}

base_image() {
  podman image exists "$BASE_IMAGE" && return
  [[ $BASE_IMAGE == localhost/debian-base ]] || { echo "error: base image $BASE_IMAGE not found" >&2; exit 2; }
  # python:3.11-slim-bookworm's stand-in: Debian bookworm has python3.11 and openjdk-17 in apt.
  need mmdebstrap
  local tar
  tar=$(mktemp --suffix .tar)
  mmdebstrap --variant=minbase --include=ca-certificates bookworm "$tar"
  podman import "$tar" "$BASE_IMAGE"
  rm -f "$tar"
}

build() {
  need podman
  base_image
  local args=(--build-arg "BASE_IMAGE=$BASE_IMAGE") mounts=() find_links extra cert url root
  find_links=$(pip_setting find-links)
  extra=$(pip_setting extra-index-url)
  cert=$(pip_setting cert)
  # Local wheel folders and file:// indexes are mounted read-only at the same paths, so the host's
  # settings work unchanged; a file:// index's pages link to ../../files, hence its parent folder.
  # (podman leaves their empty mount points in the image: empty folders, nothing of their content.)
  for root in $find_links; do mounts+=(-v "$root:$root:ro"); done
  for url in $extra; do
    [[ $url == file://* ]] && root=$(dirname "${url#file://}") && mounts+=(-v "$root:$root:ro")
  done
  [[ -z $find_links ]] || args+=(--build-arg "PIP_FIND_LINKS=$find_links")
  [[ -z $extra ]] || args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra")
  # The host's CA bundle (it may hold a proxy's CA) reaches pip as a build secret: never in a layer.
  [[ -z $cert ]] || args+=(--secret "id=pip_cert,src=$cert")
  [[ -z ${MODELS:-} ]] || args+=(--build-arg "MODELS=${MODELS//,/ }")  # commas, as make serve-locked takes them
  local start=$SECONDS
  # docker format: the OCI format has no HEALTHCHECK. Host network: pip reaches the index as the host does.
  podman build --network host --format docker -f deploy/Dockerfile -t "$IMAGE" "${args[@]}" "${mounts[@]}" .
  echo "built $IMAGE in $((SECONDS - start)) s, $(( $(podman image inspect --format "{{.Size}}" "$IMAGE") / 1000000 )) MB"
}

# refused MESSAGE COMMAND...: COMMAND exits with 2 and prints one line, "error: MESSAGE...".
refused() {
  local message=$1 out code=0
  shift
  out=$("$@" 2>&1) || code=$?
  out=$(grep -v systemd <<< "$out" || true)  # podman's note that no systemd times the HEALTHCHECK here
  [[ $code == 2 && $out == "error: $message"* && $(wc -l <<< "$out") == 1 ]] \
    || { echo "error: expected exit 2 and 'error: $message...', got $code: $out" >&2; exit 1; }
}

image_test() {
  need podman
  local start=$SECONDS total=$SECONDS
  name="image-test-$$" tmp=$(mktemp -d)  # global: the EXIT trap uses them
  trap 'podman rm -f -t 0 "$name" > /dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
  # A tiny random classifier, archived as the live tests do.
  "$PY" - "$tmp/store" > "$tmp/archive.log" 2>&1 <<'EOF' || { cat "$tmp/archive.log"; exit 1; }
import sys, tempfile
from pathlib import Path
from training.tiny import make_tiny_bundle
from textclf.torchserve.archive import ArchiveConfig, build_archive
with tempfile.TemporaryDirectory() as bundle:
    build_archive(ArchiveConfig(bundle=make_tiny_bundle(Path(bundle)), name="tiny", version="1.0", store=Path(sys.argv[1])))
EOF
  # The state dir is mounted so that this host can read the keys TorchServe writes (uid 1000 in the image).
  mkdir "$tmp/state" && chown 1000:1000 "$tmp/state"
  # Bad settings end the container at once with one error line (exit 2), before anything starts.
  refused "no model archive (*.mar) in MODEL_STORE=" podman run --rm "$IMAGE"
  refused "SERVER='nope' must be torchserve or ray" podman run --rm -e SERVER=nope "$IMAGE"
  refused "TOKEN_AUTH=off needs a loopback BIND_ADDRESS" podman run --rm -e TOKEN_AUTH=off \
    -v "$tmp/store:/home/model-server/model-store:ro" "$IMAGE"
  echo "bad settings refused: exit 2, one error line"
  start=$SECONDS
  # No systemd here to time the HEALTHCHECK: the loop below runs it (podman healthcheck run).
  podman run -d --name "$name" --health-interval disable -v "$tmp/store:/home/model-server/model-store:ro" \
    -v "$tmp/state:/home/model-server/state" -p 127.0.0.1::8080 -p 127.0.0.1::8081 "$IMAGE" > /dev/null
  echo "waiting for the HEALTHCHECK"
  until podman healthcheck run "$name" > /dev/null 2>&1; do
    [[ $(podman inspect --format '{{.State.Running}}' "$name") == true ]] || { podman logs "$name"; exit 1; }
    (( SECONDS - start < 300 )) || { echo "error: not healthy after 300 s" >&2; podman logs "$name"; exit 1; }
    sleep 2
  done
  echo "healthy $((SECONDS - start)) s after podman run"
  [[ $(podman exec "$name" id -u) == 1000 ]] || { echo "error: the server does not run as uid 1000" >&2; exit 1; }
  "$PY" - "$(podman port "$name" 8080)" "$(podman port "$name" 8081)" "$tmp/state/key_file.json" <<'EOF'
import sys
from pathlib import Path
from textclf.torchserve.errors import TorchServeError
from textclf.torchserve.rest import TorchServeClient
inference, management, keys = sys.argv[1:]
client = TorchServeClient(f"http://{inference}", f"http://{management}", Path(keys))
answer = client.predict("tiny", "What a wonderful day!")
assert set(answer["scores"]) == {"negative", "positive"}, answer
try:
    client.register("other", "tiny-1.0.mar")
    sys.exit("error: the model API is not locked (register accepted)")
except TorchServeError as e:
    assert e.status == 405, e
print(f"predicted {answer['label']!r} through the container; register refused (405)")
EOF
  local stop=$SECONDS
  podman stop -t 20 "$name" > /dev/null
  local code
  code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  echo "stopped in $((SECONDS - stop)) s, exit code $code; image test took $((SECONDS - total)) s"
  [[ $code == 0 ]] || { podman logs "$name"; exit 1; }
}

case "${1:-}" in
  build) build ;;
  test) image_test ;;
  *) echo "usage: $0 build|test" >&2; exit 2 ;;
esac
