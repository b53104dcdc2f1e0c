"""textclf: fine-tune transformer text classifiers and serve them on TorchServe.

The package's layers, bottom to top (import-linter checks them; see pyproject.toml):

    handlers/            the TorchServe handler: a leaf that ships alone inside each .mar
    textclf.core         errors and exit codes, options, logging, paths: imports nothing else of ours
    training/            data, recipe, tuning, distillation, export (imports handlers and the core)
    textclf.torchserve   archives, the server, its operations and clients
    textclf.pipelines    what spans training and serving: the demo, the feedback loop, drift checks
    textclf.cli          the `textclf` command
    bench/               the benchmarks (not installed)
"""

__version__ = "0.13.0"
