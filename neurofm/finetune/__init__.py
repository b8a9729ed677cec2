"""Finetuning heads, subject adapters and probes on released checkpoints.

Not built yet: tracked by the "Finetuning released checkpoints" issue.
"""
