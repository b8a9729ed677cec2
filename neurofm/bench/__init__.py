"""Benchmarks that run the whole pipeline: :mod:`~.representation` (does a release's frozen
representation carry the signal?), with its raw-feature baseline (:mod:`~.features`), probes
(:mod:`~.probes`, :mod:`~.tasks`), the same-bitrate PCA codec (:mod:`~.tokenizer_baseline`) and its
report (:mod:`~.report`)."""
