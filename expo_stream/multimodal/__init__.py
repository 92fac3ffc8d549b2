"""Multimodal DDPO (RLHF-V) on a LLaVA-style CLIP + LLM model, and its extrapolation.

Optional extra ``[mm]`` (torch, transformers, peft, datasets, pillow). Nothing here is imported by
``import expo_stream`` or by the merge path; the CLI imports these modules inside its ``mm``
commands. Extrapolating a trained model is the ordinary engine's job: ``mm export`` writes full
safetensors and ``expo-stream merge`` takes them like any other checkpoint.

- :mod:`.segments`: RLHF-V's corrected segments, a token-level diff of chosen against rejected.
- :mod:`.data`: ``mm preprocess``, RLHF-V rows or per-sample JSON files to a ``DatasetDict``.
- :mod:`.tiny`: the tiny tokenizer, model configs and toy preference data for tests and the demo.
- :mod:`.model`: building, adapting and loading the LLaVA model; the image-token check.
- :mod:`.ddpo`: batches with per-token weights, sequence scores and the DDPO loss.
- :mod:`.train`: ``mm train-ddpo``, the training loop (precision, OOM recovery, checkpoints).
- :mod:`.export` and :mod:`.generate`: ``mm export`` and ``mm generate``.
"""
