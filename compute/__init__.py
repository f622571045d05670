"""Pure data and ML code for stockpipe: no Prefect imports, callable from tests and scripts."""
