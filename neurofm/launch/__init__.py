"""Launch commands (single process, torchrun, deepspeed, SLURM).

Not built yet: tracked by the "Masked-code pretraining" issue.
"""
