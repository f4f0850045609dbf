"""The network and its files: the U-Net, the model folder's files and digests, the engines that run it, ONNX export, int8."""
