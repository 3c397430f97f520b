"""Batches: from a manifest to a recorded batch, running it, and operating on it (status, cancel, retry, resume)."""
