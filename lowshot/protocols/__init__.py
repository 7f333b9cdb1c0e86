"""Side protocols on cached features or a trained model: episodes, gfsl, incremental, add-class, representations."""
