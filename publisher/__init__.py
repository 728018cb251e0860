"""The quote publisher: a simulated PSX market or a replayed file, written to Redis."""
