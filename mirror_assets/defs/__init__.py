"""The Dagster definitions: sources, assets, jobs, schedules, sensors, checks and the
resource, each a thin layer over `runs/` and `analytics/`; `definitions.py` builds them.
"""
