"""One module per notebook: the work behind each experiment, so notebooks stay narration."""
