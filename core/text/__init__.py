"""Text handling: CLIP tokenization and prompt processing."""
