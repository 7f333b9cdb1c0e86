"""Side protocols beside the low-shot grid: episodes, gfsl, incremental (N + 1), add-class, representations, fscil."""
