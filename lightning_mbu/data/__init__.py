"""Segmentation data: folder dataset layouts, checks of every image/mask pair, the built-in sample."""

from .datamodule import SAMPLE_ROOT, SegmentationDataModule
from .dataset import BadSampleError, SegmentationDataset
from .layouts import LAYOUTS, Sample, detect_layout

__all__ = ["LAYOUTS", "SAMPLE_ROOT", "BadSampleError", "Sample", "SegmentationDataModule", "SegmentationDataset",
           "detect_layout"]
