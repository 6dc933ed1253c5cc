"""Config presets (ml_collections). Each file exposes `get_config(arg) -> ConfigDict`; nothing heavy is imported."""
