"""The sensor-aware tokenizer: signal shards → discrete code shards.

- :mod:`.model` — :class:`~.model.SensorTokenizer` (sensor encoder, patch front ends, spatial compressor,
  temporal mixer, residual quantizer, sensor decoder);
- :mod:`.train` — :func:`~.train.train_tokenizer` (resumable);
- :mod:`.evaluate` — :func:`~.evaluate.evaluate_tokenizer` (held-out PCC, R², spectral error, bitrate, code usage);
- :mod:`.encode` — :func:`~.encode.encode_shards` (code shards);
- :mod:`.checkpoint` — ``config.json`` + ``model.safetensors`` directories.

It lives inside ``neurofm`` because a top-level ``tokenizers`` package would shadow Hugging Face's
``tokenizers``, which ``transformers`` imports.
"""
