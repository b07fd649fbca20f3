"""Alerts and governance analytics: pure rules and computations on frozen dataclasses (rules.py, engine.py,
analytics.py), and the webhook notifier (notify.py). Imports only core: storage, web and the composition root
(dloop/alerts.py gathers the inputs and runs the evaluator) build on it."""
