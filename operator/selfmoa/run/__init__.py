"""The run's model: the stage table, the store layout, records, the planner, metrics, the report."""
