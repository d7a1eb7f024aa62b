"""Task plugins. ``tasks.base`` holds the contract every task follows."""
