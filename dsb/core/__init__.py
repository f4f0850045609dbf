"""The bottom layer: errors, atomic writes, argument checks, progress, the config, label renumbering.

Nothing here knows about images, networks or Kaggle; every other layer may import it.
"""
