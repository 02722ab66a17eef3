"""The alerts, one module per group of concerns; each module's ``alerts(p)`` lists its alerts in order."""
