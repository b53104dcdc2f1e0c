"""Ray Serve: the bundles and .mar archives TorchServe serves, served by Ray Serve with the same handler, URLs,
bodies and token (docs/ray-serve.md). shape.py reads a deployment's shape (no Ray), context.py adapts the handler's
TorchServe context, app.py holds the deployments, ops.py the commands, container.py the image's entry point."""
