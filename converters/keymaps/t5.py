"""Key map of the T5 v1.1 encoder from transformers layouts. Our MindSpore names are transformers' names, so the
map is the identity plus the named exceptions: the tied embedding, and the decoder of a full T5."""
from __future__ import annotations

from .rules import Alias, Drop, Spec, identity


def t5_transformers() -> Spec:
    rules = (
        Alias("encoder.embed_tokens.weight", "shared.weight", "shared.weight",
              "tied to shared.weight (one MindSpore tensor)"),
        Drop("decoder.{path}", "decoder of an encoder-decoder T5; PixArt uses the encoder only"),
        Drop("lm_head.weight", "language-model head of an encoder-decoder T5; PixArt uses the encoder only"),
        identity(),
    )
    return Spec("t5_transformers", "text_encoder", rules)


def t5_mindspore() -> Spec:
    """Our MindSpore folders: transformers' names, the embedding once (``shared.weight``)."""
    return Spec("t5_mindspore", "text_encoder", (identity(),))
