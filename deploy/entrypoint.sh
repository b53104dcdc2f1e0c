#!/bin/sh
# The serving image's entry point (deploy/Dockerfile runs it under tini). SERVER picks the server that serves every
# archive of MODEL_STORE; both take the same environment contract (MODEL_STORE, BIND_ADDRESS, TOKEN_AUTH, STATE_DIR,
# INFERENCE_PORT, START_TIMEOUT_S: textclf/torchserve/container.py, docs/deploy.md):
#   torchserve (default, also when empty)  TorchServe 0.12 in locked mode    python -m textclf.torchserve.container
#   ray                                    Ray Serve on a local Ray           textclf ray-container
# Anything else ends the container at once with one error line and exit 2, the contract's code for bad settings,
# before anything starts: a typo must not silently start the other server.
# exec: the server replaces this shell, so the SIGTERM tini forwards reaches it directly.
# (On KubeRay this script does not run: KubeRay replaces the command with its own `ray start`.)
set -eu
case "${SERVER:-torchserve}" in
    torchserve) exec python -m textclf.torchserve.container "$@" ;;
    ray) exec textclf ray-container "$@" ;;
    *)
        echo "error: SERVER='${SERVER}' must be torchserve or ray" >&2
        exit 2
        ;;
esac
