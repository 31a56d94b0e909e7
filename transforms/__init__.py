"""igbeam transforms package."""
