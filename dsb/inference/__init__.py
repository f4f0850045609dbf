"""One image to its nuclei, over any callable network.

The path of one image, module by module: :mod:`.preprocess` (grey, nuclei
bright), :mod:`.scale` (the nucleus diameter, estimated or given, and the
scale the network sees the image at), :mod:`.resample`, :mod:`.probabilities`
(tiled network calls through :mod:`.tiling`, test-time augmentation),
:mod:`.watershed` (probabilities to nuclei), :mod:`.split` (merged-looking
nuclei split again), :mod:`.labels` (nuclei back on the image's own grid);
:mod:`.predict` strings them together. No deep-learning import here: the
network is any function from a batch to probabilities.
"""
