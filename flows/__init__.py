"""Prefect orchestration for stockpipe: flows and tasks only; the work lives in `compute`."""
