"""What the three training loops (tokenizer, pretraining, finetuning) share: the metrics log
(JSONL + TensorBoard, truncated on resume) and the resume check of trajectory settings."""

from neurofm.training.metrics import MetricsLog
from neurofm.training.resume import changed_settings, check_resume_settings

__all__ = ["MetricsLog", "changed_settings", "check_resume_settings"]
