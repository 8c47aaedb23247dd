"""Command-line tools that are not pipeline stages (stages/ holds one module per DVC stage)."""
