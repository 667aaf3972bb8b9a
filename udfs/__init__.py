"""Spark adapters: pandas UDFs around the core scorer. No flag parsing here."""
