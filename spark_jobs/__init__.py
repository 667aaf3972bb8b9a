"""Entry points: flags -> read -> transform -> write. No tensors here."""
