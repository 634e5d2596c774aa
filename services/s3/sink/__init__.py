"""s3-sink: write batches of events as JSON-lines objects, whole or not at all, a replay to the same key."""
