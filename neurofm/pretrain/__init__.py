"""Masked-code pretraining with DeepSpeed.

Not built yet: tracked by the "Masked-code pretraining" issue.
"""
