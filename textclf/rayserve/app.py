"""The two Ray Serve applications, by import path (a Serve config's `import_path`, KubeRay's RayService included):

    textclf.rayserve.app:model_app     one model version (args: textclf/rayserve/shape.py MODEL_ARGS)
    textclf.rayserve.app:ingress_app   TorchServe's inference API over every routed version (args below)

The ingress answers TorchServe's URLs with its bodies, statuses and token check, so clients move from TorchServe
unchanged: /predictions/{name}[/{version}], /explanations/{name}[/{version}], /v1/models/{name}:predict|:explain,
/v2/models/{name}[/versions/{version}]/infer, /ping. Added: /ready (200 once every routed version has a running
replica) and /docs (FastAPI's OpenAPI page). /ready and /docs need no token: probes cannot send one, and neither
reveals more than the routed names.

ingress_app args (all of them are the deployment's user_config, so a change reaches the running replicas through
reconfigure() without a restart): models {name: {"default": version, "versions": [...]}}; key_file (a JSON key file
as textclf.torchserve.keys reads it; its inference key is the bearer token; absent or null: no token needed);
max_request_size (bytes; larger bodies get TorchServe's bare 413).
"""
# No `from __future__ import annotations`: FastAPI must see the real `Request` annotations of the class routes.

import asyncio
import hmac
import json
import logging
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from textclf.rayserve.context import Answer, Call
from textclf.rayserve.shape import (
    INGRESS_CPUS,
    INGRESS_DEPLOYMENT,
    MAX_REQUEST_SIZE,
    MODEL_DEPLOYMENT,
    ModelShape,
    RayServeError,
    app_name,
    check_routes,
)
from textclf.torchserve.keys import KeyFileError, read_keys

logger = logging.getLogger(__name__)
INGRESS_ARGS = {"models", "key_file", "max_request_size"}
# A replica that dies mid-request fails it with RayActorError: inference is idempotent, so it is sent again (to
# another replica once the router has dropped the dead one) after these pauses, then answered 503.
RETRY_DELAYS_S = (0.2, 1.0)
RETRIED = (RayActorError, BackPressureError, DeploymentUnavailableError)
READY_CACHE_S = 1.0
TOKEN_REFUSED = ("Token Authorization failed. Token either incorrect, expired, or not provided correctly")
ANY_METHOD = ["GET", "POST", "PUT", "DELETE"]  # TorchServe hands any method's body to the handler

api = FastAPI(title="textclf on Ray Serve",
              description="TorchServe's inference API (docs/api.md, docs/openapi.yaml), served by Ray Serve "
                          "(docs/ray-serve.md).")


def model_app(args: dict):
    """One model version's application: ModelShape.from_args(args) as a deployment of the real handler."""
    from textclf.rayserve.replica import ModelReplica  # here: the ingress and the commands never load torch

    shape = ModelShape.from_args(args)
    return ModelReplica.options(**shape.deployment_options()).bind(shape.to_dict())


def ingress_config(args: dict | None) -> dict:
    """The ingress's validated user_config; RayServeError for a mistake."""
    args = dict(args or {})
    unknown = sorted(set(args) - INGRESS_ARGS)
    if unknown:
        raise RayServeError(f"unknown ingress_app argument(s) {unknown}; allowed: {sorted(INGRESS_ARGS)}")
    size = args.get("max_request_size", MAX_REQUEST_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise RayServeError(f"max_request_size must be a whole number of bytes >= 1, got {size!r}")
    key_file = args.get("key_file")
    return {"models": check_routes(args.get("models")), "key_file": str(key_file) if key_file else None,
            "max_request_size": size}


def ingress_app(args: dict):
    return Ingress.options(user_config=ingress_config(args)).bind()


def _error(status: int, kind: str, message: str) -> JSONResponse:
    """TorchServe's frontend error body."""
    return JSONResponse({"code": status, "type": kind, "message": message}, status_code=status)


class _Token:
    """The inference key of the key file, re-read when the file changes (a rotated key needs no restart)."""

    def __init__(self, key_file: str | None):
        self.path, self.stamp, self.key = (Path(key_file) if key_file else None), None, None

    def allows(self, header: str | None) -> bool:
        if self.path is None:
            return True
        try:
            stat = self.path.stat()
            if (stat.st_mtime_ns, stat.st_size) != self.stamp:
                self.key, self.stamp = read_keys(self.path).inference, (stat.st_mtime_ns, stat.st_size)
        except (OSError, KeyFileError) as e:
            logger.error("no token can be checked: %s", e)
            return False
        given = header[len("Bearer "):] if header and header.startswith("Bearer ") else ""
        return hmac.compare_digest(given.encode(), self.key.encode())


@serve.deployment(name=INGRESS_DEPLOYMENT, ray_actor_options={"num_cpus": INGRESS_CPUS}, max_ongoing_requests=1000)
@serve.ingress(api)
class Ingress:
    def __init__(self):
        self.models: dict = {}
        self.handles: dict = {}
        self.token, self.max_request_size = _Token(None), MAX_REQUEST_SIZE
        self._ready: tuple[float, list] | None = None

    def reconfigure(self, config: dict) -> None:
        """A new routing table, key file or size limit, swapped in at once: requests already sent keep their
        version; the next ones see the new table (Serve calls this on start and on every user_config change)."""
        config = ingress_config(config)
        handles = {}
        for name, entry in config["models"].items():
            for version in entry["versions"]:
                key = (name, version)
                handles[key] = self.handles.get(key) or serve.get_deployment_handle(MODEL_DEPLOYMENT,
                                                                                    app_name(name, version))
        self.models, self.handles, self._ready = config["models"], handles, None
        self.token, self.max_request_size = _Token(config["key_file"]), config["max_request_size"]
        logger.info("routing %s", json.dumps(self.models, sort_keys=True))

    # ---- TorchServe's inference API ----------------------------------------------------------------------------
    @api.api_route("/predictions/{name}", methods=ANY_METHOD)
    async def predictions(self, name: str, request: Request) -> Response:
        return await self._infer(request, name, None)

    @api.api_route("/predictions/{name}/{version}", methods=ANY_METHOD)
    async def predictions_version(self, name: str, version: str, request: Request) -> Response:
        return await self._infer(request, name, version)

    @api.api_route("/explanations/{name}", methods=ANY_METHOD)
    async def explanations(self, name: str, request: Request) -> Response:
        return await self._infer(request, name, None, explain=True)

    @api.api_route("/explanations/{name}/{version}", methods=ANY_METHOD)
    async def explanations_version(self, name: str, version: str, request: Request) -> Response:
        return await self._infer(request, name, version, explain=True)

    @api.post("/v1/models/{name}:predict")
    async def kserve_v1_predict(self, name: str, request: Request) -> Response:
        return await self._infer(request, name, None)

    @api.post("/v1/models/{name}:explain")
    async def kserve_v1_explain(self, name: str, request: Request) -> Response:
        return await self._infer(request, name, None, explain=True)

    @api.post("/v2/models/{name}/infer")
    async def open_inference(self, name: str, request: Request) -> Response:
        return await self._infer(request, name, None)

    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def open_inference_version(self, name: str, version: str, request: Request) -> Response:
        return await self._infer(request, name, version)

    @api.get("/ping")
    async def ping(self, request: Request) -> Response:
        """Health, as TorchServe's /ping (with the token when one is required): the ingress answers."""
        if not self.token.allows(request.headers.get("authorization")):
            return _error(400, "InvalidKeyException", TOKEN_REFUSED)
        return JSONResponse({"status": "Healthy"})

    @api.get("/ready")
    async def ready(self) -> Response:
        """Readiness: 200 once every routed version has a RUNNING replica, else 503 naming those that do not."""
        waiting = await self._not_ready()
        if waiting:
            return JSONResponse({"status": "Not ready", "waiting": waiting}, status_code=503)
        return JSONResponse({"status": "Ready"})

    # ---- the path of every request -----------------------------------------------------------------------------
    async def _infer(self, request: Request, name: str, version: str | None, explain: bool = False) -> Response:
        if not self.token.allows(request.headers.get("authorization")):
            return _error(400, "InvalidKeyException", TOKEN_REFUSED)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_request_size:
            return Response(status_code=413)  # TorchServe's frontend: no body at all
        body = await request.body()
        if len(body) > self.max_request_size:
            return Response(status_code=413)
        entry = self.models.get(name)
        if entry is None:
            return _error(404, "ModelNotFoundException", f"Model not found: {name}")
        version = version or entry["default"]
        handle = self.handles.get((name, version))
        if handle is None:
            return _error(404, "ModelVersionNotFoundException",
                          f"Model version: {version} does not exist for model: {name}")
        call = Call(body, request.headers.get("content-type", ""), explain)
        answer = await self._send(handle, call, name, version)
        if answer is None:
            return _error(503, "ServiceUnavailableException",
                          f'Model "{name}" Version {version} has no replica to serve the request; try again')
        return Response(answer.body, status_code=answer.status, media_type=answer.content_type)

    async def _send(self, handle, call: Call, name: str, version: str) -> Answer | None:
        for delay in (*RETRY_DELAYS_S, None):
            try:
                return await handle.remote(call)
            except RETRIED as e:
                logger.warning("%s %s: %s%s", name, version, type(e).__name__,
                               "; sending the request again" if delay is not None else "; answering 503")
                if delay is None:
                    return None
                await asyncio.sleep(delay)
        return None

    async def _not_ready(self) -> list[str]:
        now = time.monotonic()
        if self._ready is None or now - self._ready[0] > READY_CACHE_S:
            status = await asyncio.to_thread(serve.status)  # the controller's view; a blocking call
            waiting = []
            for name, entry in self.models.items():
                for version in entry["versions"]:
                    app = status.applications.get(app_name(name, version))
                    deployment = app.deployments.get(MODEL_DEPLOYMENT) if app else None
                    running = deployment.replica_states.get("RUNNING", 0) if deployment else 0
                    if not running:
                        waiting.append(f"{name} {version}")
            self._ready = (now, waiting)
        return self._ready[1]

