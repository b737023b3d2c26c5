"""Live tail of the event log: the newest events, normalised, for the real-time debugger."""
