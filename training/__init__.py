"""Dataset capture and training tools for the retraining loop (run in ``.venv``)."""
