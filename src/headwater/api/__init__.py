"""The HTTP application: collector routes, query API, health and metrics."""
