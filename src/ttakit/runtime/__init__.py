"""How views reach the model: run configuration, the view loop, backends, export, torchrun."""
