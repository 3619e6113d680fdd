"""Tasks: one module per task (what its predictions are, how they are scored and compared).
A new task is a module here plus its head in mvdeploy.models."""
