"""Metrics: bits/dim, FID, class consistency of samples, out-of-distribution scores."""

from .classifier import SmallCNN, dataset_classifier, train_classifier
from .fid import FeatureExtractor, FeatureExtractorError, FIDStats, dataset_statistics, fid_from_stats, frechet_distance
from .likelihood import bits_per_dim, evaluate_bpd
from .model_data import load_model_data
from .ood import auroc, score_bpd, score_datasets, typicality_auroc, write_scores_csv
from .sample_quality import fid_of_model, guidance_accuracy
from .samples import generate_levels
from .trajectory import evaluate_trajectory_bound

__all__ = ["bits_per_dim", "evaluate_bpd", "SmallCNN", "dataset_classifier", "train_classifier", "FeatureExtractor",
           "FeatureExtractorError", "FIDStats", "dataset_statistics", "fid_from_stats", "frechet_distance", "auroc",
           "score_bpd", "score_datasets", "typicality_auroc", "write_scores_csv", "generate_levels", "fid_of_model",
           "guidance_accuracy", "load_model_data", "evaluate_trajectory_bound"]
