"""Parameter and checkpoint files on disk, below the trainers and the pipelines that read them."""
