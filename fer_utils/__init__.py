"""Facial emotion recognition, reproducible end to end: readers, models, training, metrics, figures, pipeline."""
