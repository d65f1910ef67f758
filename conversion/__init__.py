"""Checkpoint conversion into the π family's Hugging Face format."""
