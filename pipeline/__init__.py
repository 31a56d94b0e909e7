"""igbeam pipeline package."""
