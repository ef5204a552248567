"""Observability: structured logs, OpenTelemetry spans that travel through the outbox."""
