"""SmolLM2 world: the built-in world's fictional-harm design in real English for SmolLM2-135M-Instruct."""
