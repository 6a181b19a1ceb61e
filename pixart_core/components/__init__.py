"""One module per component; importing this package registers them all, in pipeline order."""
from . import transformer, text_encoder, vae  # noqa: F401  (registration order = pipeline order)

# a pipeline folder's non-network parts, copied as they are
PIPELINE_COPIED = ("tokenizer", "scheduler")
