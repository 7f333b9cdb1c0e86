"""Side protocols beside the low-shot grid: episodes, incremental (N + 1), add-class, representations, fscil."""
