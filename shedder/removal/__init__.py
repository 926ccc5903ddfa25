"""Removal: the catalogue of removable components and the reversible masks that remove them."""
