"""Stage 2, features: per symbol, the 30-row rolling mean of Volume and median of Adj Close.

stage.py    the stage: a Ray task per stage-1 part, unchanged parts carried over
rolling.py  the rolling statistics over one part
results.py  the typed result: reports/features.json
"""
