"""Tuning: search spaces, studies, the server tuning itself (serve.py), the trial scheduler."""
