"""Headwater: self-hosted event analytics (HTTP collector, durable log, Iceberg lake, SQL)."""

__version__ = "0.1.0"
