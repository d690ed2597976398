"""Airflow's cluster policies: every task of every DAG asks stepguard before it executes.

Airflow imports this module from PYTHONPATH (or $AIRFLOW_HOME/config) on the
DAG processor, the scheduler and every worker. Point it at the sidecar with
`[stepguard] target` in airflow.cfg or AIRFLOW__STEPGUARD__TARGET.
"""

from sidecar.integrations.airflow import task_policy

__all__ = ["task_policy"]
