"""``surgery sweep`` / ``plot`` / ``recipe``: the paper's figures as resumable sweeps of in-memory variants.

config.py (settings), recipe.py (the recipe schema and the paper's N), run.py (entry point: check, jobs, local
executor), workers.py (what evaluates a job), ray_executor.py, report.py (the run directory's files), scores.py
(normalized median, GLUE average, error bars), plots.py (figures and the markdown table), cli.py (thin).
"""
