"""Tracking plans as code: versioned JSON Schemas per event, checked in CI, enforced at ingest."""
