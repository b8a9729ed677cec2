"""The sensor-aware tokenizer (signal shards → discrete code shards).

Not built yet: tracked by the "Sensor-aware tokenizer" issue. The package exists so the layout of
DESIGN.md holds; it lives inside ``neurofm`` because a top-level ``tokenizers`` would shadow Hugging
Face's ``tokenizers``.
"""
