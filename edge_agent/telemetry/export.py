"""The device's direct OTLP/HTTP export: the exporter lives with sync (the cloud ingest
re-exports through the same one); see sync/otlp.py."""

from sync.otlp import OtlpHttpExporter, OtlpTarget, targets_from_env

__all__ = ["OtlpHttpExporter", "OtlpTarget", "targets_from_env"]
