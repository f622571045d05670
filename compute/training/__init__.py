"""Stage 3's work: XGBoost on Ray Train, evaluated on a time holdout against a naive baseline.

split.py    rows per date, and the holdout cutoff (the latest rows by date are the test set)
params.py   the device, the worker layout and XGBoost's parameters
worker.py   what every Ray Train worker runs: read its share of stage 2, train, evaluate
summary.py  the workers' results merged into the typed metrics, the model's metadata, the log
"""
