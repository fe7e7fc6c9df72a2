"""Meta-awareness: the meta prompt, parsing its predictions, their rewards, and expert SFT targets."""
