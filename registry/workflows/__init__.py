"""The ConTrans steps on a registry: extract, fit, transplant, evaluate, generate.

Each step has one function that computes (tensors in, tensors out, no database) and one that
records (blobs, then rows in one transaction, through a `Catalog`). The single commands
(`Registry.extract`, ``crx fit``...), ``crx apply`` (`crx.registry.declare.apply`) and plan
execution (`crx.registry.resolve.execute`) all call the same functions, so a change to
extraction or to the evaluation protocol is made once:

- `workspace`: a `Catalog` plus the models loaded on it (`Workspace.load`);
- `corpus`: the neutral calibration corpus and its cached residual states;
- `extract`: concept vectors from contrast pairs (estimator, settings);
- `fit`: affine maps between two models' residual streams (W/b rows, metrics, reuse);
- `transplant`: a source vector through chosen maps (per-layer mapping, lineage key);
- `evaluate`: steering layer and reference norm, the emotion and TruthfulQA protocols;
- `generate`: base and steered continuations.

Torch is imported only inside the functions that compute.
"""
