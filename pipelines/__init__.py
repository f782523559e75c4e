"""Steps of the model-promotion pipeline; each module exposes ``run(...) -> Result``."""
