"""What the three training loops (tokenizer, pretraining, finetuning) share: the metrics log
(JSONL + TensorBoard, truncated on resume), the resume check of trajectory settings and the
SIGTERM handling (:class:`~neurofm.training.preemption.Preemption`: checkpoint, then stop)."""

from neurofm.training.metrics import MetricsLog
from neurofm.training.preemption import Preemption
from neurofm.training.resume import changed_settings, check_resume_settings

__all__ = ["MetricsLog", "Preemption", "changed_settings", "check_resume_settings"]
