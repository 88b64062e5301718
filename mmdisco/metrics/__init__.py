"""Evaluation metrics: feature-set distances, the paper's feature networks, AV-Align."""

from mmdisco.metrics.frechet import feature_stats, frechet_distance, polynomial_mmd

__all__ = ["feature_stats", "frechet_distance", "polynomial_mmd"]
