"""Schedules: manifests fired on a cron or at a time by `wan-batch beat`, each firing a batch."""
