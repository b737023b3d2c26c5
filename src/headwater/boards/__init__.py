"""Saved insights, dashboards and read-only share links."""
