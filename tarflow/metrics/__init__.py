"""Metrics: bits/dim, FID, class consistency of samples, out-of-distribution scores."""

from .likelihood import bits_per_dim, evaluate_bpd

__all__ = ["bits_per_dim", "evaluate_bpd"]
from .classifier import SmallCNN, dataset_classifier, train_classifier  # noqa: E402
from .fid import FeatureExtractor, FeatureExtractorError, FIDStats, dataset_statistics, fid_from_stats, \
    frechet_distance  # noqa: E402
from .ood import auroc, score_bpd, write_scores_csv  # noqa: E402
from .samples import generate_levels  # noqa: E402

__all__ += ["SmallCNN", "dataset_classifier", "train_classifier", "FeatureExtractor", "FeatureExtractorError",
            "FIDStats", "dataset_statistics", "fid_from_stats", "frechet_distance", "auroc", "score_bpd",
            "write_scores_csv", "generate_levels"]
