"""MxWhisper diarizer: who spoke when."""
