"""pytest, for the whole repository: the napari plugin's widget modules import napari and Qt, so
their doctests are collected only where the ``napari`` extra is installed."""

import importlib.util

_GUI = ("napari", "magicgui", "qtpy")
collect_ignore_glob = [] if all(importlib.util.find_spec(name) for name in _GUI) else ["dsb/napari/*_widget.py"]
