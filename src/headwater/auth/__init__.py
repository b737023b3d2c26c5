"""API keys: creation, hashing, roles, lookup."""
