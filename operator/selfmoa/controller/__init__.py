"""The Kubernetes operator: Kopf handlers over the pure planner, executed with Kubernetes objects.

Nothing here is imported by the CLI until `selfmoa operator` runs; nothing here imports torch
or transformers (the stages run in the Jobs, never in the operator).
"""
