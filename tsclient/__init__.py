"""Command-line tools for building, serving and calling TorchServe text classifiers."""
