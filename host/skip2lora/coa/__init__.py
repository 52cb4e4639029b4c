"""CoA-LoRA: one adapter for many quantization configurations, its Pareto search and workflow."""
