"""The local engine: planning questions, the edit pipeline, audits, and `LocalEngine`, which composes
them over the model runtime and the memory book."""
