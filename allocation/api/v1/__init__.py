"""The resourceful API under /api/v1/ (write side; the reads are in readmodels/api.py)."""
