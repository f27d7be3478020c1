"""Evaluation: the shapes oracle, CLIP score."""
