"""What `wan-batch run` starts for itself: a private redis-server and a Celery worker on a thread."""
