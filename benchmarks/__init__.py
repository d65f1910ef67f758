"""Benchmarks of this project's π models; `python -m benchmarks` compares them with transformers' PI0."""
