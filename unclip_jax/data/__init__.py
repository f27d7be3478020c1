"""Input data: TFDS builders, the input pipeline, degradations, embedding shards."""
