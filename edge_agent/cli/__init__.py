"""The device command line."""

from edge_agent.cli.main import main

__all__ = ["main"]
