"""Serving: the BentoML service (service.py) and registering and packaging the model (package.py)."""
