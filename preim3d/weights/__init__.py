"""Reading and writing weights: official files (safely) and our bundle format."""
