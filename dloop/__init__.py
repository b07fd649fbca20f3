"""dloop package."""
