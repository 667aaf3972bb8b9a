"""Demo scaffolding, not the method: the sample corpus and the fixture model's training."""
