"""Prediction: mmseg's test-time flow, from a decoded image to a label map at its original size.

* :mod:`~vitseg.inference.pipeline` -- decode, keep-ratio resize, normalize (mmcv's and isl-org/DPT's test
  transforms; training's resize is the same code);
* :mod:`~vitseg.inference.windows` -- ``whole_inference`` and ``slide_inference`` (overlapping windows);
* :mod:`~vitseg.inference.postprocess` -- logits resized to the original size and argmax, in bounded memory;
* :mod:`~vitseg.inference.predict` -- ``vitseg.predict`` (one image or a list), ``label_map`` / ``prob_map``
  (single scale or ms+flip), ``get_transform``;
* :mod:`~vitseg.inference.predict_files` -- ``vitseg.predict_files``: files, folders and globs to a tree of
  label PNGs and overlays.

``vitseg.evaluate`` (:mod:`vitseg.eval`) scores the same predictions against labels.
"""
