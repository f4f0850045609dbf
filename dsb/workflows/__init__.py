"""What the commands do, as library calls: predict a folder into a Kaggle CSV, segment files,
tune, evaluate, report, export (ONNX, int8, BioImage Model Zoo).

Each workflow strings the layers below together and returns records; :mod:`dsb.cli` prints them.
"""
