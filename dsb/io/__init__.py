"""Files in and out: images, the competition's folders, annotation layouts, label writers.

:mod:`.images` reads any microscope image and the competition's stage folders,
:mod:`.annotations` the layouts napari, Fiji, Cellpose and StarDist write,
:mod:`.folders` finds and checks the images a command is given, and
:mod:`.writers` writes label images. Imports only :mod:`dsb.core`.
"""
