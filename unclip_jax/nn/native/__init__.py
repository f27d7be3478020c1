"""oneDNN's convolutions for CPUs: their C++ source and its build."""
