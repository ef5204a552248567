"""Agents: the durable agent loop (`loop`) and the wiring of inference providers to it
(`providers`)."""
