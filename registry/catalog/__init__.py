"""Catalogue operations on a session: one module per kind of object.

Functions here take an open `Session` and return `schemas` records; they never commit (the
caller's transaction does) and never touch the blob store (the facade puts blobs first, so a
row never points at a blob that is not there).
"""
