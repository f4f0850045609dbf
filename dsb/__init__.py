"""dsb: nucleus instance segmentation for the 2018 Data Science Bowl."""

__version__ = "0.1.0"
