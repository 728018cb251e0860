"""The simulated PSX market: the publisher's `simulate` and the service's embedded feed
(no REDIS_URL) both run it."""
