"""posenc inside other libraries' models (imported on demand:
``posenc.integrations.transformers``)."""
