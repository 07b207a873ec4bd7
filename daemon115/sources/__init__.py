"""Where candidates come from: watch folders and feeds."""
