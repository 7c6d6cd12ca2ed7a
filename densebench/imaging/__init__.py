"""The JPEG path users serve: from a file's bytes to top-5, each stage timed on every image.

- ``sources.py``: where the JPEG files come from (``jpeg:PATH``, ``imagefolder:PATH``, or
  ``jpeg:synthetic[:WxH]``, encoded once, seeded, kept in the artifact cache), and which
  of them cannot be decoded;
- ``decoders.py``: registered decoders (Pillow, ``torchvision.io.decode_jpeg`` on the CPU
  and on CUDA), plugins beside them;
- ``pipeline.py``: read, decode, preprocess (the weights' own transforms), batch, copy to
  the device, run, copy back, softmax and top-5, with an optional pool of decode workers;
  the closed-loop measurement of that path (``e2e-jpeg`` mode) and the stage summary.
"""
