"""NeuroFM: one foundation model for EEG, MEG, sEEG/ECoG and fMRI.

Stages (each reads the previous stage's files from disk):

- :mod:`neurofm.data_shards` — recordings → webdataset signal shards with sensor metadata;
- :mod:`neurofm.tokenizers` — the sensor-aware tokenizer (signal shards → code shards);
- :mod:`neurofm.pretrain` — the masked-code transformer trained with DeepSpeed;
- :mod:`neurofm.finetune` — heads, adapters and probes on released checkpoints;
- :mod:`neurofm.launch` — single process, torchrun, deepspeed or SLURM launch commands.
"""

from neurofm.errors import NeuroFMError

__version__ = "0.1.0"
__all__ = ["NeuroFMError", "__version__"]
