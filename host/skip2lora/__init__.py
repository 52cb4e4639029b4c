"""skip2lora host tooling: data, numpy reference of the fine-tuning methods, model export, CLI."""
__version__ = "0.1.0"
