"""Layers shared by the model families (attention, with logical axis names on every parameter)."""
