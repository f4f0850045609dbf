"""dsb in napari: segment the image you look at, correct it, fine-tune on your corrections.

An npe2 plugin (``napari.yaml``, under the ``napari.manifest`` entry point),
installed with ``pip install -e ".[napari]"`` in the dsb checkout:

- :class:`~dsb.napari.segment_widget.SegmentWidget`: the nuclei of an image layer as a Labels layer;
- :class:`~dsb.napari.finetune_widget.FinetuneWidget`: save the corrected labels into a project
  folder (:mod:`dsb.napari.project`) and fine-tune the model on them (:mod:`dsb.napari.finetuning`);
- a writer of label TIFFs and a reader of them (:mod:`dsb.napari.io`);
- synthetic sample images (:mod:`dsb.napari.samples`).

Only the two widget modules import napari and Qt; ``import dsb`` and the
``dsb`` command import nothing of this package.
"""
