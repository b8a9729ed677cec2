"""The modality tables every stage shares: the tokenizer family each modality belongs to
(electrophysiology at a sampling rate, BOLD at a TR) and each one's index for the model's modality
embedding (never reorder: released weights depend on it)."""

FAMILY_OF_MODALITY = {"eeg": "electro", "meg": "electro", "ieeg": "electro", "fmri": "bold"}
MODALITY_IDS = {"eeg": 0, "meg": 1, "ieeg": 2, "fmri": 3}

__all__ = ["FAMILY_OF_MODALITY", "MODALITY_IDS"]
