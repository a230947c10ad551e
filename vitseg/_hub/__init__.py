"""Weights on the wire and in the cache: downloads, the converted-weights cache, Hub folders, other files.

This package fetches and caches; building models from what it fetches is :func:`vitseg.create_model`'s job.

* :mod:`~vitseg._hub.settings` -- the cache root and the environment (mirror, offline mode, time limits);
* :mod:`~vitseg._hub.download` -- the per-directory lock, the streamed and hash-checked download, the
  checks of cached files;
* :mod:`~vitseg._hub.zoo` -- the zoo's converted weights (:func:`fetch_weights`), the earlier layout moved;
* :mod:`~vitseg._hub.files` -- other files by URL (:func:`fetch_file`) and Hub folders (:func:`fetch_hf_folder`).

Cache layout under ``$VITSEG_HOME`` (default ``~/.cache/vitseg``)::

    <file>/model.safetensors       the converted weights (vitseg names, auxiliary head included)
    <file>/source.json             where they came from (url, full SHA-256 of the original file) and
                                   ``cached_sha256``, the SHA-256 of model.safetensors as written
    <file>/<original file>         optional: a file downloaded by hand, consumed on the next call
    pretrained/<file>              other files fetched by URL (:func:`fetch_file`, e.g. ImageNet backbones)
    pretrained/<file>.source.json  its URL and SHA-256
    .locks/<dir>.lock              one lock per directory, so concurrent processes fetch once

Every cached file is checked against the SHA-256 recorded when it was written before it is used; one
that does not match is fetched again (with a warning naming it), never loaded as it is. Final files are
written to a temporary name and ``os.replace``d.
"""
from __future__ import annotations

from .files import fetch_file, fetch_hf_folder
from .settings import MMSEG_PREFIX, mmseg_url, vitseg_home
from .zoo import cache_dir, fetch_weights

__all__ = ["vitseg_home", "mmseg_url", "cache_dir", "fetch_weights", "fetch_file", "fetch_hf_folder",
           "MMSEG_PREFIX"]
