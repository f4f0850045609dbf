"""The competition's formats and services: RLE, submission CSVs, the metric, the data, the Kaggle API."""
