"""Celery tasks: thin shells (like web views) that take ids and call plain functions holding the logic."""
