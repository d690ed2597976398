"""Orchestrator integrations: ask stepguard before every task of a real workflow run.

- `steps`: what a task declares and what its run supplies, turned into a request (pure).
- `gate`: the orchestrator-independent check (client, config, fail-closed verdicts)
  and the outcome report after the task.
- `outcomes`: what an admitted attempt did: its status, and the effect a step
  declares with `record_effect`.
- `airflow`: an Airflow 3 cluster policy (`airflow_local_settings.task_policy`).
- `prefect`: a Prefect 3 task decorator.

Importing this package, `steps`, `gate` or `outcomes` imports neither Airflow nor Prefect;
`airflow` and `prefect` import their orchestrator only when a task runs.
See docs/integrations.md.
"""
