"""voter package."""
