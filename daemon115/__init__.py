"""daemon115: keeps a 115 cloud drive fed with downloads, unattended."""

__version__ = "0.1.0"
