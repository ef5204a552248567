"""Replication between a device and the cloud: outbox, envelopes, clocks, merges, MQTT, ingest.

Imports nothing of edge_agent.
"""
