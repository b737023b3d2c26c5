"""The HTTP collector: lolscale `/track` and the Segment tracking API onto the event log."""
