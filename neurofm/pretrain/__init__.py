"""Masked-code pretraining with DeepSpeed.

- :mod:`.model` — :class:`~.model.MaskedCodeModel` and :func:`~.model.masked_code_loss`;
- :mod:`.masking` — random / time-block / latent-block masks;
- :mod:`.train` — :func:`~.train.train_pretrain` (DeepSpeed ZeRO 0–3, exact resume, SIGTERM);
- :mod:`.export` — :func:`~.export.export_release` and :func:`~.export.from_pretrained`.
"""
