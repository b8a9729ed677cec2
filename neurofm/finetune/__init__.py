"""Finetuning and probing released checkpoints.

- :class:`~.encoder.BrainEncoder`: a release's frozen tokenizer + encoder (raw windows of any montage →
  token states of any layer, or every layer's pooled embedding);
- :mod:`~.targets`: image / text / speech target embeddings from local models, cached;
- :mod:`~.model`: pooling, per-subject adapters, classification and contrastive heads, frozen /
  last-k / full / LoRA modes; :mod:`~.prefix_lm`: text generation through a local causal LM;
- :mod:`~.data`: labelled windows and grouped splits; :mod:`~.train`: the Accelerate loop with early
  stopping, baselines, resumable epochs and the run folder; :mod:`~.metrics`: the field's metrics;
- :mod:`~.probe`: per-layer logistic / ridge probes; :mod:`~.embed`: embeddings to disk;
- :mod:`~.speech_synthetic`: the synthetic speech-locked set.
"""
