"""The allocation domain: plain Python, no Django, DRF or Celery."""
