"""The browser app: static pages served by `headwater up` at `/`, talking to the JSON API."""
