"""Real-time market quotes over websockets, fed by Redis pub/sub."""
