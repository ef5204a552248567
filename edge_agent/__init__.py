"""edge-agent: durable agentic workflows on edge devices."""

__version__ = "0.1.0"
