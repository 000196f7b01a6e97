raise SystemExit("use `python -m training.capture` (more tools follow)")
