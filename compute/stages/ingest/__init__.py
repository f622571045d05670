"""Stage 1, ingest: every symbol file of the source into stage1/ and quarantine/.

stage.py    the stage: plan (what changed in the source), build (a Ray task per batch), report
sources.py  finding and reading symbol files in a Kaggle-layout folder or zip
parse.py    parsing, validating and downcasting files; bad rows to quarantine with a reason
report.py   the ingest report (every file and row accounted for) and its Prefect artifacts
results.py  the typed result: reports/ingest.json
"""
