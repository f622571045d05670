"""Stage 3, train: XGBoost on Ray Train, evaluated on a time holdout against a naive baseline.

stage.py    the stage: plan, then the fit, the metrics, the model card and the reports
fit.py      Ray Train's XGBoostTrainer run from the driver, and the workers' results read back
worker.py   what every Ray Train worker runs: read its share of stage 2, train, evaluate
split.py    rows per date, and the holdout cutoff (the latest rows by date are the test set)
params.py   the device, the worker layout and XGBoost's parameters
summary.py  the workers' results merged into the typed metrics and the training log
plots.py    the learning curve and predicted-vs-actual plots
report.py   the training artifact for the Prefect UI
results.py  the typed results: model/metrics.json, and what each worker reports
"""
