"""Command-line entry points (absl): ``python -m launch.benchmark``."""
