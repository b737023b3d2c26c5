"""Shared foundations: settings, errors, event model. Imports nothing else of headwater."""
