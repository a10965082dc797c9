"""Celery GPU worker: runs transfer jobs from the Redis queue with a model loaded once per process."""
