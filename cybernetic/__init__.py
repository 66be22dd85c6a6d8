"""cybernetic."""
