"""Small command-line tools that inspect finished runs (``python -m tools.<name>``)."""
