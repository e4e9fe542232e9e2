"""Frozen-teacher logits from outside the trial: a shared Ray actor server, and an offline disk cache."""
