"""Stage 5, forecast: the next session's volume per symbol, with a range (stage.py)."""
