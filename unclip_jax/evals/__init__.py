"""Evaluation: the shapes oracle, CLIP score, diversity, Fréchet distance, bootstrap intervals."""
