"""Finetuning and probing released checkpoints.

Built so far: :class:`~.encoder.BrainEncoder` (a release's tokenizer + encoder: raw windows with their
sensors → per-layer embeddings) and :func:`~.probe.probe_release` (per-layer linear probes with grouped
cross-validation, the field's metrics, chance and shuffled-label baselines, plots). Heads for vision,
text and speech, adapters, LoRA and Accelerate training are still to come (the "Finetuning released
checkpoints" issue).
"""
