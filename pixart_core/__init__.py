"""The facts every layer of pixart-mindspore shares, importable without torch or MindSpore: the component registry
(``registry``, ``components/``), dtypes, error types and their exit codes, manifest reading, version stamps, the
folding of key lists in messages, and the one generator of sample inputs."""

from . import components  # noqa: E402,F401  (registers every component)
