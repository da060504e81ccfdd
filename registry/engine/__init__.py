"""The ConTrans engine (torch + transformers): load models, find layers, extract concept
vectors, fit affine maps, steer, evaluate. Imported only by commands that compute; the
catalogue side of crx never imports torch."""
