"""The `scanward` command line; `starter.py` is its entry point."""
