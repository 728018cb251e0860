"""What the publisher and the service share through Redis: names, topology, payloads."""
